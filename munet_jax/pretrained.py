"""Import torchvision ResNet-50 weights into `ResNetEncoder` variables (Enc-Q, Enc-R).

Two sources are accepted, from `.pth` (needs torch, imported only then) or from
`.safetensors` with the same keys (numpy only):

  * torchvision `resnet50` (ImageNet; the paper's initialisation): keys
    `conv1.weight`, `bn1.running_mean`, `layer1.0.downsample.0.weight`, ...
  * the ResNet-50 body of torchvision `maskrcnn_resnet50_fpn` ("v2" init): the same
    keys under `backbone.body.`; its FrozenBatchNorm2d has weight/bias/running_*
    and no `num_batches_tracked`. The prefix is detected automatically.

Conversion: conv OIHW -> HWIO; BN weight/bias -> params scale/bias; running
mean/var -> batch_stats mean/var. layer4, fc, the Mask R-CNN heads and
`num_batches_tracked` are known and skipped; any other extra key, any missing
key and any shape mismatch is reported by name, all at once, in a
`PretrainedWeightsError`. For an encoder with more input channels than the
checkpoint (Enc-R: RGB + mask), the extra stem-conv input channels start at zero,
so at load time Enc-R computes exactly the ImageNet features of the RGB image.

To make a `.safetensors` from a `.pth` once (where torch is installed):
    import torch, safetensors.torch as st
    sd = torch.load("resnet50-0676ba61.pth", map_location="cpu", weights_only=True)
    st.save_file({k: v.contiguous() for k, v in sd.items()}, "resnet50.safetensors")
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import numpy as np

RESNET50_STAGE_SIZES = (3, 4, 6)  # layer1..layer3 of torchvision resnet50
EXPANSION = 4  # bottleneck output channels = 4 * planes
_PREFIXES = ("backbone.body.", "module.", "")  # Mask R-CNN body, DataParallel, plain
# Keys that a full resnet50 / maskrcnn_resnet50_fpn checkpoint has but the encoder does not use.
_IGNORED = re.compile(
    r"(^|\.)num_batches_tracked$"
    r"|^(backbone\.body\.|module\.)?(layer4|fc)\."
    r"|^backbone\.fpn\.|^rpn\.|^roi_heads\."
)
_BLOCK_KEY = re.compile(r"^layer(\d+)\.(\d+)\.")


class PretrainedWeightsError(ValueError):
    """A checkpoint that does not fit the encoder; names every offending key."""

    def __init__(self, source: str, missing=(), unexpected=(), mismatched=(), hint: str = ""):
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.mismatched = sorted(mismatched)  # "key: checkpoint (..) vs expected (..)"
        lines = [f"{source} does not fit the ResNet encoder:"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        if self.mismatched:
            lines.append(f"  shape mismatches ({len(self.mismatched)}): " + "; ".join(self.mismatched))
        if hint:
            lines.append("  " + hint)
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------- reading files


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a torchvision state dict from `.safetensors` (numpy only) or `.pth` (torch)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    if path.suffix in (".pth", ".pt"):
        try:
            import torch  # lazily: torch is never a dependency of munet_jax
        except ImportError as e:
            raise ImportError(
                f"reading {path} needs PyTorch, which is not installed. Either install torch, or "
                "convert the file once where torch is available to .safetensors (see the "
                "munet_jax.pretrained docstring) and pass that path instead."
            ) from e
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
        # Training checkpoints wrap the weights: {'state_dict': {...}} or {'model': {...}}.
        for wrapper in ("state_dict", "model"):
            if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
        if not isinstance(obj, Mapping):
            raise PretrainedWeightsError(str(path), hint=f"expected a state dict, found {type(obj).__name__}")
        return {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, "detach")}
    raise ValueError(f"pretrained weights file {path}: unknown suffix {path.suffix!r}; use .pth or .safetensors")


def strip_prefix(state_dict: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Detects the body prefix: 'backbone.body.' (Mask R-CNN), 'module.' (DataParallel) or none.

    Returns (body keys without prefix, keys outside the body that are not known heads).
    Known-ignored keys are dropped here.
    """
    def body_keys(prefix: str) -> int:
        starts = tuple(prefix + name for name in ("conv1.", "bn1.", "layer"))
        return sum(key.startswith(starts) for key in state_dict)

    prefix = max(_PREFIXES, key=body_keys)  # ties (no body at all) -> the first, harmless
    body, stray = {}, []
    for key, value in state_dict.items():
        if _IGNORED.search(key):
            continue
        if key.startswith(prefix):
            body[key[len(prefix) :]] = value
        else:
            stray.append(key)
    return body, stray


# --------------------------------------------------------------------------- key table


def _bn_entries(torch_name: str, path: tuple[str, ...], channels: int):
    """BN affine -> params scale/bias, running statistics -> batch_stats mean/var."""
    for torch_suffix, collection, leaf in (
        ("weight", "params", "scale"),
        ("bias", "params", "bias"),
        ("running_mean", "batch_stats", "mean"),
        ("running_var", "batch_stats", "var"),
    ):
        yield f"{torch_name}.{torch_suffix}", collection, path + (leaf,), (channels,)


def _key_table(width: int, stage_sizes: Sequence[int], in_channels: int):
    """(torch key, collection, flax path, torch shape) for every tensor of the encoder."""
    table = [("conv1.weight", "params", ("conv1", "kernel"), (width, in_channels, 7, 7))]
    table += _bn_entries("bn1", ("bn1",), width)
    inplanes = width
    for s, blocks in enumerate(stage_sizes):
        planes = width * 2**s
        for b in range(blocks):
            tk, fk = f"layer{s + 1}.{b}", f"layer{s + 1}_{b}"
            # (torch conv, torch bn, flax conv, flax bn, OIHW shape)
            convs = [
                ("conv1", "bn1", "conv1", "bn1", (planes, inplanes, 1, 1)),
                ("conv2", "bn2", "conv2", "bn2", (planes, planes, 3, 3)),
                ("conv3", "bn3", "conv3", "bn3", (EXPANSION * planes, planes, 1, 1)),
            ]
            if b == 0:  # projection shortcut: torchvision's Sequential(conv, bn) -> indices 0, 1
                convs.append(("downsample.0", "downsample.1", "downsample_conv", "downsample_bn",
                              (EXPANSION * planes, inplanes, 1, 1)))
            for tconv, tbn, fconv, fbn, shape in convs:
                table.append((f"{tk}.{tconv}.weight", "params", (fk, fconv, "kernel"), shape))
                table += _bn_entries(f"{tk}.{tbn}", (fk, fbn), shape[0])
            inplanes = EXPANSION * planes
    return table


def checkpoint_architecture(body: Mapping[str, np.ndarray]) -> tuple[int | None, tuple[int, ...]]:
    """(stem width, blocks in layer1..layer3) of a prefix-stripped state dict."""
    conv1, bn1 = body.get("conv1.weight"), body.get("bn1.weight")
    if conv1 is not None and conv1.ndim == 4:
        width = int(conv1.shape[0])
    else:  # conv1 missing or malformed: it will be reported; bn1 still tells the width
        width = int(bn1.shape[0]) if bn1 is not None and bn1.ndim == 1 else None
    blocks = [0, 0, 0]
    for key in body:
        m = _BLOCK_KEY.match(key)
        if m and 1 <= int(m.group(1)) <= 3:
            blocks[int(m.group(1)) - 1] = max(blocks[int(m.group(1)) - 1], int(m.group(2)) + 1)
    return width, tuple(blocks)


# --------------------------------------------------------------------------- conversion


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def torchvision_resnet_to_flax(
    state_dict: Mapping[str, np.ndarray],
    in_channels: int,
    stage_sizes: Sequence[int] = RESNET50_STAGE_SIZES,
    width: int | None = None,
    source: str = "state dict",
) -> dict[str, dict]:
    """One encoder's {'params': ..., 'batch_stats': ...} (float32 numpy) from a torchvision state dict.

    state_dict: torchvision keys, optionally under 'backbone.body.' (Mask R-CNN).
    in_channels: the encoder's input channels (3 Enc-Q, 4 Enc-R); stem-conv input
    channels beyond the checkpoint's start at zero. width: the expected stem width
    (default: read from conv1.weight). Raises PretrainedWeightsError naming every
    missing, unexpected and mis-shaped key.
    """
    body, stray = strip_prefix(state_dict)
    src_width, _ = checkpoint_architecture(body)
    width = width if width is not None else (src_width or 64)
    conv1 = body.get("conv1.weight")
    src_in = int(conv1.shape[1]) if conv1 is not None and conv1.ndim == 4 else 3
    if src_in > in_channels:
        raise PretrainedWeightsError(
            source,
            mismatched=[f"conv1.weight: checkpoint {tuple(conv1.shape)} has {src_in} input channels, "
                        f"the encoder only {in_channels}"],
        )
    table = _key_table(width, stage_sizes, src_in)
    known = {key for key, *_ in table}
    missing = [key for key in known if key not in body]
    unexpected = stray + [key for key in body if key not in known]
    mismatched = [
        f"{key}: checkpoint {tuple(body[key].shape)} vs expected {shape}"
        for key, _, _, shape in table
        if key in body and tuple(body[key].shape) != shape
    ]
    if missing or unexpected or mismatched:
        raise PretrainedWeightsError(source, missing, unexpected, mismatched)

    out: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for key, collection, path, shape in table:
        value = np.asarray(body[key], dtype=np.float32)
        if len(shape) == 4:
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
            if key == "conv1.weight" and in_channels > src_in:
                # Enc-R's mask channel(s) after RGB: zero, so the import preserves the RGB features.
                pad = np.zeros(value.shape[:2] + (in_channels - src_in, value.shape[3]), np.float32)
                value = np.concatenate([value, pad], axis=2)
        _set(out[collection], path, np.ascontiguousarray(value))
    return out


# --------------------------------------------------------------------------- into a model


def _encoder_architecture(params: Mapping[str, Any]) -> tuple[int, int, tuple[int, ...]]:
    """(in_channels, width, stage_sizes) of a ResNetEncoder's params subtree."""
    _, _, cin, width = params["conv1"]["kernel"].shape  # HWIO
    counts: dict[int, int] = {}
    for name in params:
        m = re.fullmatch(r"layer(\d+)_(\d+)", name)
        if m:
            counts[int(m.group(1))] = max(counts.get(int(m.group(1)), 0), int(m.group(2)) + 1)
    return int(cin), int(width), tuple(counts[s] for s in sorted(counts))


def _copy_tree(tree: Mapping) -> dict:
    return {k: _copy_tree(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def _flat(tree: Mapping, prefix: tuple = ()):
    for k, v in tree.items():
        if isinstance(v, Mapping):
            yield from _flat(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def load_resnet_into(
    variables: Mapping[str, Mapping],
    path: str | Path,
    encoder_names: Sequence[str] = ("enc_q", "enc_r"),
) -> dict[str, dict]:
    """Returns a copy of `variables` with each named encoder loaded from `path`.

    variables: {'params': {..., name: {...}}, 'batch_stats': {..., name: {...}}}, the
    init output of a module holding `ResNetEncoder`s under `encoder_names`. The input
    is not modified; loaded leaves are numpy arrays with the target leaf's dtype.
    Raises PretrainedWeightsError if the checkpoint does not fit, and names the
    config when the encoder's width / blocks differ from the checkpoint's.
    """
    source = str(path)
    state_dict = load_state_dict(path)
    body, _ = strip_prefix(state_dict)
    src_width, src_blocks = checkpoint_architecture(body)
    new = _copy_tree(variables)
    for name in encoder_names:
        if name in variables.get("params", {}) and name not in variables.get("batch_stats", {}):
            raise PretrainedWeightsError(
                source,
                hint=(f"encoder {name!r} has no BatchNorm statistics: it was built with "
                      "backbone.norm='group_norm'; ImageNet / Mask R-CNN weights need "
                      "--config.model.backbone.norm=frozen_bn"),
            )
        for collection in ("params", "batch_stats"):
            if name not in variables.get(collection, {}):
                raise KeyError(
                    f"load_resnet_into: variables[{collection!r}] has no encoder {name!r} "
                    f"(has {sorted(variables.get(collection, {}))}); pass encoder_names= the "
                    "ResNetEncoder submodule names and variables with a 'batch_stats' collection"
                )
        in_ch, width, stages = _encoder_architecture(variables["params"][name])
        if src_width is not None and (width, stages) != (src_width, src_blocks[: len(stages)]):
            raise PretrainedWeightsError(
                source,
                hint=(
                    f"encoder {name!r} is configured with backbone.width={width}, "
                    f"backbone.stage_sizes={stages}, but the checkpoint has width {src_width}, "
                    f"blocks {src_blocks}; build the model with a backbone config matching the "
                    "checkpoint (munet_config() is ResNet-50: width 64, stage_sizes (3, 4, 6); "
                    "tiny_munet_config() cannot take ImageNet weights)"
                ),
            )
        loaded = torchvision_resnet_to_flax(state_dict, in_ch, stages, width, source=source)
        for collection in ("params", "batch_stats"):
            target = dict(_flat(variables[collection][name]))
            got = dict(_flat(loaded[collection]))
            if set(target) != set(got):
                diff = sorted("/".join(p) for p in set(target) ^ set(got))
                raise PretrainedWeightsError(
                    source, hint=f"encoder {name!r} {collection} tree differs from ResNetEncoder at {diff}"
                )
            for p, value in got.items():
                if tuple(target[p].shape) != value.shape:  # unreachable unless the module changes
                    raise PretrainedWeightsError(
                        source, mismatched=[f"{name}/{'/'.join(p)}: {value.shape} vs {tuple(target[p].shape)}"]
                    )
                _set(new[collection][name], p, value.astype(target[p].dtype))
    return new
