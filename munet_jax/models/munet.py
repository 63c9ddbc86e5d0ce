"""The whole MUNet as one Flax module with pure entry points.

Fig. 2 of the paper, with memory as an explicit argument:

  encode_query(images)            Enc-Q on RGB frames -> res2/res3/res4 features.
                                  The training unroll and the inference loop
                                  call it once per frame and reuse I_{t-1}'s
                                  res4 for the MU-Layer (never recomputed).
  encode_memory(image, masks)     Enc-R on RGB + one object's mask -> memory
                                  key/value of every object of a frame.
  segment(query, prev_res4, memory, ...)
                                  MU-Layer on (F_{t-1}, F_t), fusion (MSAM or
                                  addition), query key/value, space-time memory
                                  read per object, decoder, soft aggregation ->
                                  logits over background + K objects.

Images are uint8 (or float in 0..255) NHWC of any size: they are normalised
with ImageNet statistics here, on device, and padded symmetrically to a
multiple of 16 (as STM pads); `segment` crops its output back to `image_hw`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from munet_jax.models import winograd
from munet_jax.models.aggregation import soft_aggregate
from munet_jax.models.decoder import Decoder
from munet_jax.models.memory import KeyValue, memory_read
from munet_jax.models.msam import make_fusion
from munet_jax.models.mu_layer import MotionUncertaintyLayer
from munet_jax.models.resnet import ResNetEncoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STRIDE = 16  # res4 stride: inputs are padded to a multiple of this


def compute_dtype(config) -> Any:
    names = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
    if config.dtype not in names:
        raise ValueError(f"model.dtype={config.dtype!r}: choose one of {sorted(names)}")
    return names[config.dtype]


def padding_for(height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric (top, bottom), (left, right) padding up to multiples of STRIDE."""
    pad_h = -height % STRIDE
    pad_w = -width % STRIDE
    return (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)


def normalize_and_pad(images: jax.Array) -> jax.Array:
    """[..., H, W, 3] in 0..255 -> ImageNet-normalised float32 [..., Hp, Wp, 3].

    Padding is zero after normalisation, i.e. the mean colour.
    """
    x = images.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    return pad_spatial(x)


def pad_spatial(x: jax.Array) -> jax.Array:
    """Zero-pads the H, W axes (-3, -2) of [..., H, W, C] to multiples of STRIDE."""
    (top, bottom), (left, right) = padding_for(x.shape[-3], x.shape[-2])
    pads = [(0, 0)] * (x.ndim - 3) + [(top, bottom), (left, right), (0, 0)]
    return jnp.pad(x, pads)


def crop_to(x: jax.Array, image_hw: tuple[int, int]) -> jax.Array:
    """Undoes `pad_spatial` on [..., Hp, Wp, C]."""
    (top, _), (left, _) = padding_for(*image_hw)
    return x[..., top : top + image_hw[0], left : left + image_hw[1], :]


class MUNet(nn.Module):
    """MUNet; `config` is the `model` ConfigDict of `munet_jax.models.config`."""

    config: ml_collections.FrozenConfigDict

    def setup(self):
        c = self.config
        dtype = compute_dtype(c)
        width = c.backbone.width
        self.feature_dim = 16 * width  # res4 channels, D in the paper (1024 for ResNet-50)
        # Run configs written before backbone.norm existed are frozen-BN models.
        norm = c.backbone.get("norm", "frozen_bn")
        # How the 3x3 convs run (winograd.Conv3x3; same parameters whichever). Run configs
        # written before `conv3x3` had `decoder_conv` (the decoder's only), or neither: 'auto'.
        conv = c.get("conv3x3", c.get("decoder_conv", "auto"))
        self.enc_q = ResNetEncoder(stage_sizes=tuple(c.backbone.stage_sizes), width=width, dtype=dtype, norm=norm,
                                   conv_algorithm=conv)
        self.enc_r = ResNetEncoder(stage_sizes=tuple(c.backbone.stage_sizes), width=width, dtype=dtype, norm=norm,
                                   conv_algorithm=conv)
        if c.mu_layer.enabled:
            self.mu_layer = MotionUncertaintyLayer(
                window=c.mu_layer.window,
                reduction=c.mu_layer.reduction,
                tau=c.mu_layer.tau,
                motion_net=tuple(tuple(layer) for layer in c.mu_layer.motion_net),
                use_displacement=c.mu_layer.use_displacement,
                use_uncertainty=c.mu_layer.use_uncertainty,
                dtype=dtype,
            )
            self.fusion = make_fusion(c.fusion, dtype)
        self.kv_query = KeyValue(key_dim=c.key_dim, value_dim=c.value_dim, dtype=dtype, conv_algorithm=conv)
        self.kv_memory = KeyValue(key_dim=c.key_dim, value_dim=c.value_dim, dtype=dtype, conv_algorithm=conv)
        self.decoder = Decoder(dim=c.decoder_dim, dtype=dtype, conv_algorithm=conv)

    def encode_query(self, images: jax.Array) -> dict[str, jax.Array]:
        """Enc-Q. images [B, H, W, 3] -> {'res2': [B, Hp/4, Wp/4, 4w], 'res3': .../8, 'res4': .../16}."""
        return self.enc_q(normalize_and_pad(images))

    def encode_memory(self, images: jax.Array, masks: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Enc-R + memory key/value for every object of a frame.

        images [B, H, W, 3]; masks [B, K, H, W] soft or hard in [0, 1], one per
        object -> keys [B, K, h, w, Ck], values [B, K, h, w, Cv] with h = Hp / 16.
        """
        b, k = masks.shape[:2]
        image = normalize_and_pad(images)  # [B, Hp, Wp, 3]
        mask = pad_spatial(masks.astype(jnp.float32)[..., None])  # [B, K, Hp, Wp, 1]
        image = jnp.broadcast_to(image[:, None], mask.shape[:-1] + (3,))
        x = jnp.concatenate([image, mask], axis=-1).reshape((b * k,) + mask.shape[2:4] + (4,))
        keys, values = self.kv_memory(self.enc_r(x)["res4"])
        return keys.reshape((b, k) + keys.shape[1:]), values.reshape((b, k) + values.shape[1:])

    def segment(
        self,
        query: dict[str, jax.Array],
        prev_res4: jax.Array,
        mem_keys: jax.Array,
        mem_values: jax.Array,
        mem_valid: jax.Array,
        object_valid: jax.Array,
        image_hw: tuple[int, int],
    ) -> dict[str, jax.Array]:
        """Segments one query frame against the memory.

        query: `encode_query` of I_t; prev_res4 [B, h, w, D]: res4 of I_{t-1}.
        mem_keys [B, K, T, h, w, Ck], mem_values [B, K, T, h, w, Cv],
        mem_valid [B, K, T] bool (per object: objects entering mid-video have no
        memory before their first annotation), object_valid [B, K] bool.
        Returns logits [B, H, W, K+1] (channel 0 = background; softmax gives the
        soft-aggregated probabilities), fg_probs [B, K, H, W] of each object's own
        decoder, and the motion maps at h x w: displacement [B, h, w, 2],
        uncertainty [B, h, w, 1], attention [B, h, w, 1] (zeros where absent).
        """
        res4 = query["res4"]
        b, h, w, _ = res4.shape
        zeros = jnp.zeros((b, h, w, 1), jnp.float32)
        aux = {"displacement": jnp.zeros((b, h, w, 2), jnp.float32), "uncertainty": zeros, "attention": zeros}
        if self.config.mu_layer.enabled:
            motion = self.mu_layer(prev_res4, res4)
            res4, attention = self.fusion(res4, motion["motion"])
            aux["displacement"] = motion["displacement"].astype(jnp.float32)
            aux["uncertainty"] = motion["uncertainty"].astype(jnp.float32)
            if attention is not None:
                aux["attention"] = attention.astype(jnp.float32)
        q_key, q_value = self.kv_query(res4)

        # Each object reads its own memory: fold K into the batch.
        k, t = mem_keys.shape[1], mem_keys.shape[2]

        def per_object(x):  # [B, ...] -> [B*K, ...]
            return jnp.broadcast_to(x[:, None], (b, k) + x.shape[1:]).reshape((b * k,) + x.shape[1:])

        read = memory_read(
            mem_keys.reshape((b * k, t) + mem_keys.shape[3:]),
            mem_values.reshape((b * k, t) + mem_values.shape[3:]),
            mem_valid.reshape(b * k, t),
            per_object(q_key),
            per_object(q_value),
            algorithm=self.config.get("memory_read", "auto"),  # run configs from before the field: 'auto'
        )
        # The skips stay one per frame: the decoder runs their branch once and repeats it over K.
        logits2 = self.decoder(read, query["res3"], query["res2"])  # [B*K, Hp, Wp, 2]
        fg_probs = jax.nn.softmax(logits2.astype(jnp.float32), axis=-1)[..., 1]
        fg_probs = crop_to(fg_probs[..., None], image_hw)[..., 0].reshape((b, k) + tuple(image_hw))
        logits = soft_aggregate(fg_probs, object_valid)  # [B, H, W, K+1]
        return {"logits": logits, "fg_probs": fg_probs, **aux}

    def __call__(self, prev_images, images, mem_images, mem_masks, object_valid):
        """Every path once (used by `init`): one memory frame, one query frame.

        prev_images, images, mem_images [B, H, W, 3]; mem_masks [B, K, H, W];
        object_valid [B, K].
        """
        keys, values = self.encode_memory(mem_images, mem_masks)
        prev = self.encode_query(prev_images)
        query = self.encode_query(images)
        mem_valid = jnp.broadcast_to(object_valid[:, :, None], object_valid.shape + (1,))
        return self.segment(
            query, prev["res4"], keys[:, :, None], values[:, :, None], mem_valid, object_valid, images.shape[1:3]
        )


def build_model(config: ml_collections.ConfigDict) -> MUNet:
    """MUNet from a (mutable) model ConfigDict; freezing makes the module hashable."""
    return MUNet(config=ml_collections.FrozenConfigDict(config))


def init_variables(model: MUNet, rng: int | jax.Array, image_hw=(64, 64), num_objects: int = 1) -> dict:
    """Initial {'params', 'batch_stats'} from dummy inputs of the given size.

    rng: a PRNG key, or an int seed. An int seed draws with the 'rbg' generator:
    XLA compiles threefry-based initialisation of MUNet's ~100 parameter tensors
    slowly on CPU (tiny model: 35 s with threefry, 7 s with rbg, measured), and
    initial weights need no cross-backend bit-reproducibility (checkpoints carry
    the weights).
    """
    if isinstance(rng, int):
        rng = jax.random.key(rng, impl="rbg")
    images = jnp.zeros((1, *image_hw, 3), jnp.uint8)
    masks = jnp.zeros((1, num_objects, *image_hw), jnp.float32)
    valid = jnp.ones((1, num_objects), bool)
    return jax.jit(model.init)(rng, images, images, images, masks, valid)



# (model, backend) -> shapes of the PREPARED collection: which convs use Winograd
# depends only on the architecture and the backend, and finding out traces the
# whole model (~3 s on CPU), so it is done once per model.
_RECORDED: dict = {}
_transform = jax.jit(winograd.transform_kernel)  # one compile per kernel shape (~0.2 s each)


def prepared_kernels(model: MUNet, variables: dict) -> dict:
    """The `winograd.PREPARED` collection for `variables`: each Winograd 3x3 conv's transformed kernel.

    For inference, where the same parameters serve every frame, the kernel
    transform of every `winograd.Conv3x3` that uses Winograd is computed once
    here instead of in every frame's program; given back in the variables
    (`{**variables, winograd.PREPARED: kernels}`), the convs read it. That also lets
    `auto` use Winograd on the small stride-8/16 maps (key/value convs, res3/res4
    bottlenecks), where a per-call transform costs more than it saves.

    Empty ({}) where no conv uses Winograd: GPU/TPU backends, `conv3x3='direct'`,
    models narrower than 64 channels (bfloat16 models on XLA:CPU have them too: their
    Winograd convs run in float32). With the full model on
    XLA:CPU it holds 4x the weights of those convs (440 MiB float32). A
    `winograd.PREPARED` collection already in `variables` is ignored (recomputed).
    Call it outside jit (it dispatches one jitted transform per kernel).
    """
    base = {name: tree for name, tree in variables.items() if name != winograd.PREPARED}
    key = (model, jax.default_backend())
    if key not in _RECORDED:

        def record(v):
            # Every path once on a small dummy frame: each Conv3x3 that uses Winograd
            # records its transform (which convs do is independent of the frame size).
            images = jnp.zeros((1, 64, 64, 3), jnp.uint8)
            masks = jnp.zeros((1, 1, 64, 64), jnp.float32)
            valid = jnp.ones((1, 1), bool)
            _, written = model.apply(v, images, images, images, masks, valid, mutable=[winograd.PREPARED])
            return written.get(winograd.PREPARED, {})

        _RECORDED[key] = jax.eval_shape(record, base)  # shapes only: nothing is computed

    def transform(path, _):  # the collection mirrors the params tree (winograd.kernel_for)
        return _transform(winograd.kernel_for(tuple(part.key for part in path), base["params"]))

    return dict(jax.tree_util.tree_map_with_path(transform, _RECORDED[key]))


def with_compute_dtype_kernels(model: MUNet, variables: dict) -> dict:
    """`variables` with every conv kernel ('kernel' params) already in the model's compute dtype.

    Each conv casts its float32 kernel to the compute dtype before use (flax's
    `promote_dtype`), so with a bfloat16 (or float16) model casting them once here
    changes no output bit and saves the casts in every frame's program: at 240x432
    on a 2-core Xeon the bfloat16 frame took 270 -> 252, 311 -> 289 and 368 -> 339 ms
    (three interleaved runs): the full model has 39 M kernel parameters (157 MB in
    float32) and XLA:CPU converts them at a few GB/s. For inference only (an optimizer
    must see float32 parameters). The same dict where nothing changes (float32 models,
    kernels already cast).
    """
    dtype = jnp.dtype(compute_dtype(model.config))
    if dtype == jnp.float32:
        return variables
    changed = False

    def cast(path, leaf):
        nonlocal changed
        if path[-1].key == "kernel" and leaf.dtype != dtype:
            changed = True
            return leaf.astype(dtype)
        return leaf

    params = jax.tree_util.tree_map_with_path(cast, variables["params"])
    return {**variables, "params": params} if changed else variables


def with_prepared_kernels(model: MUNet, variables: dict) -> dict:
    """`variables` ready for inference: plus their `prepared_kernels` collection (from the
    float32 kernels), with the conv kernels in the compute dtype (`with_compute_dtype_kernels`).
    The same dict where there is nothing to add or cast."""
    kernels = prepared_kernels(model, variables)
    cast = with_compute_dtype_kernels(model, variables)
    return {**cast, winograd.PREPARED: kernels} if kernels else cast
