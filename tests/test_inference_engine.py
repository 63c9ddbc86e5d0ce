"""The jitted inference step, shape buckets, streaming and whole-video APIs (tiny model, CPU).

Weights are random (drawn here from the parameter shapes): the tests check the
wiring, the memory policy, compilation counts, memory use and id handling, not
segmentation quality.
"""

import gc
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from munet_jax.data.synthetic import render_video
from munet_jax.inference import InferenceEngine, VideoSegmenter, inference_config, segment_video
from munet_jax.inference.engine import choose_object_bucket, choose_size_bucket
from munet_jax.models.config import munet_config, tiny_munet_config
from munet_jax.models.munet import IMAGENET_MEAN, MUNet, build_model, init_variables, prepared_kernels
from munet_jax.models.winograd import PREPARED

BUCKET = (32, 48)


def random_variables(model, seed=0):
    """LeCun-normal kernels, small random biases, identity BatchNorm, from the shapes alone
    (`eval_shape` traces init without running it; running it takes ~1 min on a busy CPU).

    LeCun rather than He scale keeps the decoders' foreground probabilities away from
    0 / 1: saturated ones make STM's log-odds aggregation ill-conditioned (1 - p loses
    its digits), and then jit-vs-eager rounding alone moves probabilities by 1e-3."""
    shapes = jax.eval_shape(lambda r: init_variables(model, r, (32, 32), 1), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return jnp.asarray(rng.normal(0, math.sqrt(1.0 / np.prod(leaf.shape[:-1])), leaf.shape), jnp.float32)
        if name in ("bias", "mean"):
            return jnp.asarray(rng.normal(0, 0.1, leaf.shape), jnp.float32)
        return jnp.ones(leaf.shape, jnp.float32)  # BatchNorm scale, var

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def model():
    return build_model(tiny_munet_config())


@pytest.fixture(scope="module")
def variables(model):
    return random_variables(model)


@pytest.fixture(scope="module")
def engine(model):
    cfg = inference_config()
    cfg.size_buckets = (BUCKET, (64, 64))
    cfg.object_buckets = (2, 4)
    cfg.capacity = 5
    cfg.mem_every = 2
    return InferenceEngine(model, cfg)


def relabel(masks, ids):
    """Masks with ids 1..K -> the same masks with ids[k - 1]."""
    table = np.zeros(256, np.uint8)
    table[1 : len(ids) + 1] = ids
    return table[masks]


def test_bucket_choice():
    buckets = inference_config().size_buckets
    assert choose_size_bucket(480, 854, buckets) == (480, 864)
    assert choose_size_bucket(480, 910, buckets) == (480, 912)
    assert choose_size_bucket(481, 800, buckets) == (512, 832)  # less than half of 720x1280
    assert choose_size_bucket(1080, 1920, buckets) == (1088, 1920)
    # Far smaller than every bucket: the next multiples of 64, not 480x864 (30x the pixels).
    assert choose_size_bucket(96, 128, buckets) == (128, 128)
    assert choose_size_bucket(240, 432, buckets) == (240, 432)  # half-resolution DAVIS has its own bucket
    assert choose_size_bucket(250, 440, buckets) == (256, 448)  # just above it: less than half of 480x864
    # Half a bucket or more: the bucket, so near-bucket sizes keep sharing one program.
    assert choose_size_bucket(400, 700, buckets) == (480, 864)
    assert [choose_object_bucket(k, (1, 2, 4, 8, 16)) for k in (1, 2, 3, 5, 16)] == [1, 2, 4, 8, 16]


def test_steps_match_hand_composition(model, variables, engine):
    """Three steps of a 30x40 video in the 32x48 bucket against the model's entry points
    called by hand: mean-colour padding, Enc-Q res4 of the previous frame, and the
    memory {0}, {0, 1}, {0, 2} that capacity 5 / mem_every 2 gives frames 1, 2, 3."""
    frames, masks = render_video(1, 4, 30, 40, 2)
    seg = VideoSegmenter(model, variables, engine=engine)
    seg.start(frames[0], masks[0])
    probs = []
    for f in frames[1:]:
        seg.add(f)
        probs.append(seg.probabilities)  # [3, 30, 40]

    mean = np.asarray(IMAGENET_MEAN, np.float32) * 255.0
    padded = np.broadcast_to(mean, (4,) + BUCKET + (3,)).copy()
    padded[:, :30, :40] = frames
    apply = lambda method, *args: model.apply(variables, *args, method=method)
    valid = jnp.ones((1, 2), bool)

    def memory_of(t, soft):  # soft [2, 30, 40] -> key/value [1, 2, h, w, C]
        m = np.zeros((1, 2) + BUCKET, np.float32)
        m[0, :, :30, :40] = soft
        return apply(MUNet.encode_memory, padded[t : t + 1], m)

    first = np.stack([masks[0] == 1, masks[0] == 2]).astype(np.float32)
    memory = {0: memory_of(0, first)}
    held = {1: [0], 2: [0, 1], 3: [0, 2]}
    feats = [apply(MUNet.encode_query, padded[t : t + 1]) for t in range(4)]
    for t in (1, 2, 3):
        keys = jnp.stack([memory[s][0] for s in held[t]], axis=2)
        values = jnp.stack([memory[s][1] for s in held[t]], axis=2)
        out = apply(MUNet.segment, feats[t], feats[t - 1]["res4"], keys, values,
                    jnp.ones((1, 2, len(held[t])), bool), valid, BUCKET)
        ref = np.asarray(jax.nn.softmax(out["logits"][0], axis=-1))[:30, :40]  # [30, 40, 3]
        np.testing.assert_allclose(probs[t - 1], np.moveaxis(ref, -1, 0), atol=2e-6)
        memory[t] = memory_of(t, np.moveaxis(ref[..., 1:], -1, 0))
    np.testing.assert_allclose(np.asarray(seg._state.prev_res4), np.asarray(feats[3]["res4"]), atol=1e-5)


def test_one_compilation_per_bucket(model, variables, engine):
    """Videos of different true sizes and object counts in one bucket share init and step."""
    videos = [((32, 48), (1, 2)), ((30, 40), (5,)), ((25, 45), (3, 7)), ((17, 33), (200,))]
    for i, ((h, w), ids) in enumerate(videos):
        frames, masks = render_video(10 + i, 4, h, w, len(ids))
        seg = VideoSegmenter(model, variables, engine=engine)
        seg.start(frames[0], relabel(masks[0], ids))
        for f in frames[1:]:
            seg.add(f)
    assert engine.traces[("init", BUCKET, 2)] == 1
    assert engine.traces[("step", BUCKET, 2)] == 1


def test_ids_mapped_back_to_annotation_ids(model, variables, engine):
    frames, masks = render_video(3, 5, 25, 45, 2)
    first = relabel(masks[0], (7, 3))
    seg = VideoSegmenter(model, variables, engine=engine)
    np.testing.assert_array_equal(seg.start(frames[0], first), first)
    assert seg.object_ids == (3, 7)  # indices follow sorted ids
    np.testing.assert_array_equal(seg.probabilities.argmax(0), np.searchsorted([0, 3, 7], first))
    for f in frames[1:]:
        ids = seg.add(f)
        assert ids.dtype == np.uint8 and ids.shape == (25, 45)
        probs = seg.probabilities
        assert probs.shape == (3, 25, 45)
        np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
        np.testing.assert_array_equal(ids, np.asarray([0, 3, 7], np.uint8)[probs.argmax(0)])
        # Motion maps at stride 16, cropped to the true image: ceil(25 / 16) x ceil(45 / 16).
        assert {k: v.shape for k, v in seg.motion.items()} == {
            "displacement": (2, 3, 2), "uncertainty": (2, 3, 1), "attention": (2, 3, 1)}
    assert set(np.unique(ids)) <= {0, 3, 7}


def test_objects_entering_mid_video(model, variables, engine):
    frames, masks = render_video(4, 6, 32, 48, 2, appear_frames=(0, 3))
    masks = relabel(masks, (4, 9))
    assert not (masks[:3] == 9).any() and (masks[3] == 9).any()
    seg = VideoSegmenter(model, variables, engine=engine)
    seg.start(frames[0], masks[0])
    for t in (1, 2):
        assert not (seg.add(frames[t]) == 9).any()
        assert seg.object_ids == (4,) and seg.probabilities.shape[0] == 2
        assert not np.asarray(seg._state.bank.valid[1]).any()  # no memory for object 9 yet
        assert np.asarray(seg._out["probs"][2]).max() == 0.0  # not-yet-valid slot predicts exactly 0
    new = np.where(masks[3] == 9, 9, 0).astype(np.uint8)
    ids = seg.add(frames[3], new_object_mask=new)
    np.testing.assert_array_equal(ids == 9, new == 9)  # the given mask, exactly
    assert seg.object_ids == (4, 9)
    frame_index = np.asarray(seg._state.bank.frame_index)
    valid = np.asarray(seg._state.bank.valid)
    assert (valid[1] == (frame_index == 3)).all()  # object 9: only its annotation frame
    assert 3 in frame_index[1:-1]  # written permanently, not in the temporary slot
    for t in (4, 5):
        seg.add(frames[t])
    valid = np.asarray(seg._state.bank.valid)
    frame_index = np.asarray(seg._state.bank.frame_index)
    assert (valid[1] == (frame_index >= 3)).all()
    assert engine.traces[("step", BUCKET, 2)] == 1  # a new object within the bucket compiles nothing


def test_growing_past_the_object_bucket(model, variables, engine):
    frames, masks = render_video(5, 4, 32, 48, 3, appear_frames=(0, 0, 2))
    seg = VideoSegmenter(model, variables, engine=engine)
    seg.start(frames[0], masks[0])
    seg.add(frames[1])
    new = np.where(masks[2] == 3, 3, 0).astype(np.uint8)
    ids = seg.add(frames[2], new_object_mask=new)
    assert seg._state.object_valid.shape == (4,)  # moved from bucket 2 to bucket 4
    np.testing.assert_array_equal(ids == 3, new == 3)
    assert np.asarray(seg._state.object_valid).tolist() == [True, True, True, False]
    ids = seg.add(frames[3])
    assert set(np.unique(ids)) <= {0, 1, 2, 3}


def test_scan_equals_loop(model, variables, engine):
    frames, masks = render_video(6, 7, 30, 40, 2, appear_frames=(0, 2))
    masks = relabel(masks, (2, 5))
    new = np.where(masks[2] == 5, 5, 0).astype(np.uint8)
    video = segment_video(engine, variables, frames, masks[0], new_object_masks={2: new}, return_probs=True)
    seg = VideoSegmenter(model, variables, engine=engine)
    loop_ids = [seg.start(frames[0], masks[0])]
    loop_probs = [np.concatenate([seg.probabilities, np.zeros((1, 30, 40), np.float32)])]
    for t in range(1, 7):
        loop_ids.append(seg.add(frames[t], new if t == 2 else None))
        p = seg.probabilities
        loop_probs.append(p if p.shape[0] == 3 else np.concatenate([p, np.zeros((1, 30, 40), np.float32)]))
    assert video["object_ids"] == seg.object_ids == (2, 5)
    np.testing.assert_allclose(video["probs"], np.stack(loop_probs), atol=2e-6)
    # ids may differ only where two classes are within float noise of each other.
    top2 = np.sort(np.stack(loop_probs), axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 1e-4
    np.testing.assert_array_equal(video["ids"][decided], np.stack(loop_ids)[decided])
    assert engine.traces[("video", BUCKET, 2)] == 1


def test_constant_memory_on_a_long_video(model, variables, engine):
    num_frames = 5000
    frames, masks = render_video(7, 8, 32, 48, 2)
    seg = VideoSegmenter(model, variables, engine=engine)
    seg.start(frames[0], masks[0])
    state_bytes = seg._state.nbytes()

    def live_bytes():
        gc.collect()
        return sum(x.nbytes for x in jax.live_arrays())

    start = time.perf_counter()
    for t in range(1, num_frames + 1):
        seg.add(frames[t % 8])
        if t == 50:
            at_50 = live_bytes()
        if t % 1000 == 0:
            assert seg._state.nbytes() == state_bytes
    elapsed = time.perf_counter() - start
    assert live_bytes() == at_50
    frame_index = np.asarray(seg._state.bank.frame_index)
    assert frame_index[0] == 0 and frame_index.max() == num_frames
    print(f"\n{num_frames} frames in {elapsed:.1f} s ({1e3 * elapsed / num_frames:.2f} ms/frame), "
          f"state {state_bytes} bytes, live {at_50} bytes")


def test_bad_inputs_raise_clear_errors(model, variables, engine):
    frame = np.zeros((32, 48, 3), np.uint8)
    mask = np.zeros((32, 48), np.uint8)
    mask[4:10, 4:10] = 1
    seg = VideoSegmenter(model, variables, engine=engine)
    with pytest.raises(RuntimeError, match="before start"):
        seg.add(frame)
    with pytest.raises(ValueError, match="first_mask is 30x48 but the frame is 32x48"):
        seg.start(frame, mask[:30])
    with pytest.raises(ValueError, match="no object"):
        seg.start(frame, np.zeros_like(mask))
    many = mask.copy()
    many[20:24, 0:25] = np.repeat(np.arange(2, 7), 5)  # ids 1..6: 6 objects > largest bucket 4
    with pytest.raises(ValueError, match="6 objects are more than the largest inference.object_buckets entry"):
        seg.start(frame, many)
    with pytest.raises(ValueError, match="frame size 65x40 is larger than every inference.size_buckets"):
        seg.start(np.zeros((65, 40, 3), np.uint8), np.ones((65, 40), np.uint8))
    with pytest.raises(ValueError, match="dtype float32"):
        seg.start(frame.astype(np.float32), mask)
    with pytest.raises(ValueError, match="first_mask has no object"):
        segment_video(engine, variables, np.zeros((3, 32, 48, 3), np.uint8), np.zeros_like(mask))
    seg.start(frame, mask)
    with pytest.raises(ValueError, match="already tracked"):
        seg.add(frame, new_object_mask=mask)
    with pytest.raises(ValueError, match="new_object_mask is 32x40"):
        seg.add(frame, new_object_mask=mask[:, :40])
    with pytest.raises(ValueError, match="started at 32x48"):
        seg.add(np.zeros((32, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="inference.capacity=2"):
        cfg = inference_config()
        cfg.capacity = 2
        InferenceEngine(model, cfg)
    with pytest.raises(ValueError, match="multiples of 16"):
        cfg = inference_config()
        cfg.size_buckets = ((480, 854),)
        InferenceEngine(model, cfg)


def one_bucket_config():
    """Inference settings with one size bucket (BUCKET) and one object bucket (2)."""
    cfg = inference_config()
    cfg.size_buckets = (BUCKET,)
    cfg.object_buckets = (2,)
    return cfg


def test_prepared_winograd_kernels_give_the_same_video(model, variables):
    # conv3x3='winograd' makes the tiny model's stride-1 3x3 convs Winograd (its channels are below
    # auto's 128): prepared kernels (transformed once) and bare variables (transformed in every
    # frame) must segment alike, and like lax's direct convs.
    cfg = one_bucket_config()
    frames, masks = render_video(8, 5, 30, 40, 2)
    fast_config = tiny_munet_config()
    fast_config.conv3x3 = "winograd"
    fast = InferenceEngine(build_model(fast_config), cfg)
    prepared = fast.prepare(variables)
    assert set(prepared) == set(variables) | {PREPARED}
    assert fast.prepare(prepared) is prepared  # idempotent: nothing recomputed
    assert set(InferenceEngine(model, cfg).prepare(variables)) == set(variables)  # auto: nothing at 16 channels
    # One prepared kernel per stride-1 3x3 conv of the encoders and decoder, at the conv's params
    # path, and one for each key/value pair (side by side, 'key+value'); the MU-Layer's small
    # motion network keeps plain convs.
    kernels = {jax.tree_util.keystr(p[:-1] if p[-1].key == "kernel" else p)
               for p, _ in jax.tree_util.tree_leaves_with_path(prepared[PREPARED])}
    convs = {jax.tree_util.keystr(p[:-1]) for p, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
             if p[-1].key == "kernel" and leaf.shape[:2] == (3, 3) and p[0].key != "mu_layer"}
    strided = {"['enc_q']['layer2_0']['conv2']", "['enc_q']['layer3_0']['conv2']",
               "['enc_r']['layer2_0']['conv2']", "['enc_r']['layer3_0']['conv2']"}
    pairs = {f"['{m}']['{n}']" for m in ("kv_query", "kv_memory") for n in ("key", "value")}
    assert strided <= convs and pairs <= convs
    assert kernels == (convs - strided - pairs) | {"['kv_query']['key+value']", "['kv_memory']['key+value']"}
    with_prepared = segment_video(fast, prepared, frames, masks[0], return_probs=True)["probs"]
    on_the_fly = segment_video(fast, variables, frames, masks[0], return_probs=True)["probs"]
    direct_config = tiny_munet_config()
    direct_config.conv3x3 = "direct"
    direct = segment_video(InferenceEngine(build_model(direct_config), cfg), variables, frames, masks[0],
                           return_probs=True)["probs"]
    np.testing.assert_allclose(with_prepared, on_the_fly, atol=1e-4)
    np.testing.assert_allclose(with_prepared, direct, atol=1e-3)


def test_prepare_casts_conv_kernels_of_a_bfloat16_model_and_changes_no_output(model, variables):
    # Each conv casts its kernel to the compute dtype anyway: casting once in prepare must give
    # bit-identical frames (and leave norms, biases and float32 models alone).
    cfg = one_bucket_config()
    frames, masks = render_video(9, 4, 30, 40, 2)
    config = tiny_munet_config()
    config.dtype = "bfloat16"
    engine = InferenceEngine(build_model(config), cfg)
    prepared = engine.prepare(variables)
    assert engine.prepare(prepared) is prepared
    leaves = dict(jax.tree_util.tree_leaves_with_path(variables["params"]))
    cast = dict(jax.tree_util.tree_leaves_with_path(prepared["params"]))
    kernels = [p for p in leaves if p[-1].key == "kernel"]
    assert len(kernels) > 20 and all(cast[p].dtype == jnp.bfloat16 for p in kernels)
    for p, leaf in leaves.items():
        want = np.asarray(leaf.astype(cast[p].dtype), np.float32)
        np.testing.assert_array_equal(np.asarray(cast[p], np.float32), want)
        if p[-1].key != "kernel":
            assert cast[p].dtype == jnp.float32
    assert prepared["batch_stats"] is variables["batch_stats"]
    got = segment_video(engine, prepared, frames, masks[0], return_probs=True)
    engine.prepare = lambda v: v  # segment_video prepares bare variables: run them bare here
    want = segment_video(engine, variables, frames, masks[0], return_probs=True)
    assert np.abs(got["probs"][1:, 1:] - 0.5).max() < 0.5  # not saturated: a changed bit would show
    np.testing.assert_array_equal(got["probs"], want["probs"])
    np.testing.assert_array_equal(got["ids"], want["ids"])
    assert InferenceEngine(model, cfg).prepare(variables) is variables  # float32: nothing to cast or add


def test_full_model_prepares_the_wide_stride_1_convs_on_cpu():
    # Shapes only (eval_shape): which convs of the paper-size model get a prepared kernel under 'auto'.
    model = build_model(munet_config())
    like = jax.eval_shape(lambda: init_variables(model, 0, (64, 64), 1))
    kernels = jax.eval_shape(lambda v: prepared_kernels(model, v), like)
    paths = {jax.tree_util.keystr(p[:-1] if p[-1].key == "kernel" else p): leaf.shape
             for p, leaf in jax.tree_util.tree_leaves_with_path(kernels)}
    if jax.default_backend() != "cpu":
        assert paths == {}
        return
    encoders = {f"['{e}']['layer{s}_{b}']['conv2']" for e in ("enc_q", "enc_r") for s, n in ((1, 3), (2, 4), (3, 6))
                for b in range(0 if s == 1 else 1, n)}  # not the stride-2 first blocks of layer2 / layer3
    kv = {f"['{m}']['key+value']" for m in ("kv_query", "kv_memory")}  # one conv per key/value pair
    decoder = {"['decoder']['conv_read']", "['decoder']['res_read']['conv1']", "['decoder']['res_read']['conv2']"} | {
        f"['decoder']['{r}']{c}" for r in ("refine3", "refine2") for c in (
            "['conv_skip']", "['res_skip']['conv1']", "['res_skip']['conv2']", "['res_merge']['conv1']",
            "['res_merge']['conv2']")}  # not 'pred' (2 output channels)
    assert set(paths) == encoders | kv | decoder
    assert paths["['kv_query']['key+value']"] == (36, 1024, 128 + 512)
