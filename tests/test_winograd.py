"""Winograd F(4x4, 3x3) conv against direct convolution (NumPy and lax), the Conv3x3 module
(flax nn.Conv's parameters, algorithm choice, prepared kernels), gradients, and the decoder's
shared skip branch."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from munet_jax.models import tap_matmuls, winograd
from munet_jax.models.decoder import Decoder


def numpy_conv3x3(x, kernel):
    """Direct 3x3 conv, zero padding 1, in float64: x [B, H, W, C], kernel [3, 3, C, K]."""
    b, h, w, _ = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, h, w, kernel.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += xp[:, i:i + h, j:j + w] @ kernel[i, j].astype(np.float64)
    return out


def lax_conv(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)


def test_transforms_compute_1d_correlation_exactly():
    # F(4, 3) in one dimension: A^T [(G g) * (B^T d)] = the 4 outputs of correlating d (6) with g (3).
    rng = np.random.default_rng(0)
    for _ in range(20):
        d, g = rng.normal(size=6), rng.normal(size=3)
        expected = np.array([d[i:i + 3] @ g for i in range(4)])
        got = winograd.A_T @ ((winograd.G @ g) * (winograd.B_T @ d))
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 8, 8, 3, 5), (2, 13, 18, 6, 4), (3, 5, 7, 2, 9), (1, 1, 1, 4, 4)])
def test_matches_numpy_direct_conv(shape):
    # Sizes that are and are not multiples of the 4x4 tile, C != K, batch > 1, a 1x1 image.
    b, h, w, c, k = shape
    rng = np.random.default_rng(1)
    x = rng.normal(size=(b, h, w, c)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, c, k)).astype(np.float32)
    expected = numpy_conv3x3(x, kernel)
    got = np.asarray(jax.jit(winograd.conv3x3)(x, kernel))
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_strips_give_the_same_result_as_one_block():
    # 8 tile rows cut into strips of 1 and of 3 tile rows (the last strip shorter).
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 31, 37, 16)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 16, 8)).astype(np.float32)
    conv = jax.jit(winograd.conv3x3, static_argnums=2)
    whole = np.asarray(conv(x, kernel, 2**40))
    per_tile_row = 36 * 2 * 10 * 16 * 4  # ALPHA^2 * B * tile_cols * max(C, K) * 4 bytes
    for rows in (1, 3):
        strips = np.asarray(conv(x, kernel, rows * per_tile_row))
        np.testing.assert_allclose(strips, whole, rtol=0, atol=1e-5 * np.abs(whole).max())
    np.testing.assert_allclose(whole, numpy_conv3x3(x, kernel), rtol=0, atol=1e-4 * np.abs(whole).max())


def test_decoder_sized_conv_precision():
    # The shape `auto` targets (stride 4 of a small frame, 128 channels): error ~1e-5 of the scale.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 64, 72, 128)).astype(np.float32)
    kernel = (rng.normal(size=(3, 3, 128, 128)) / np.sqrt(9 * 128)).astype(np.float32)
    expected = numpy_conv3x3(x, kernel)
    got = np.asarray(jax.jit(winograd.conv3x3)(x, kernel))
    assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()


def test_gradients_match_direct_conv():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 9, 11, 4)).astype(np.float32))
    kernel = jnp.asarray(rng.normal(size=(3, 3, 4, 3)).astype(np.float32))
    target = jnp.asarray(rng.normal(size=(2, 9, 11, 3)).astype(np.float32))

    def loss(conv, x, kernel):
        return jnp.sum((conv(x, kernel) - target) ** 2)

    gw = jax.jit(jax.grad(functools.partial(loss, winograd.conv3x3), argnums=(0, 1)))(x, kernel)
    gd = jax.grad(functools.partial(loss, lax_conv), argnums=(0, 1))(x, kernel)
    for a, b in zip(gw, gd):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-4 * np.abs(np.asarray(b)).max())


def test_kernel_transform_matches_numpy():
    rng = np.random.default_rng(5)
    kernel = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)
    expected = np.einsum("ai,ijck,bj->abck", winograd.G, kernel.astype(np.float64), winograd.G).reshape(36, 4, 6)
    got = np.asarray(jax.jit(winograd.transform_kernel)(kernel))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    x = rng.normal(size=(2, 9, 7, 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(winograd.conv3x3_transformed(x, got)), numpy_conv3x3(x, kernel),
                               rtol=0, atol=1e-4 * np.abs(numpy_conv3x3(x, kernel)).max())


def _uses_lax_conv(fn, *args) -> bool:
    return "conv_general_dilated" in str(jax.make_jaxpr(fn)(*args))


@pytest.mark.parametrize("strides,use_bias", [(1, True), (2, False)])
def test_conv3x3_module_has_nn_conv_parameters_and_function(strides, use_bias):
    # Same parameter tree, same initial values (same names, order, initialisers) and, with
    # 'direct', bit-identical outputs: checkpoints and imported weights do not see the change.
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 9, 10, 3)).astype(np.float32))
    init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    ours = winograd.Conv3x3(5, strides=strides, use_bias=use_bias, kernel_init=init)
    flax_conv = nn.Conv(5, (3, 3), strides=(strides, strides), padding=((1, 1), (1, 1)), use_bias=use_bias,
                        kernel_init=init)
    v_ours, v_flax = ours.init(jax.random.PRNGKey(3), x), flax_conv.init(jax.random.PRNGKey(3), x)
    assert jax.tree_util.tree_structure(v_ours) == jax.tree_util.tree_structure(v_flax)
    for a, b in zip(jax.tree_util.tree_leaves(v_ours), jax.tree_util.tree_leaves(v_flax)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(ours.apply(v_ours, x)), np.asarray(flax_conv.apply(v_flax, x)))
    # Extra leading axes are batch axes, as in nn.Conv.
    x5 = jnp.stack([x, x + 1])
    np.testing.assert_array_equal(np.asarray(ours.apply(v_ours, x5)), np.asarray(flax_conv.apply(v_flax, x5)))


def test_conv3x3_winograd_matches_and_stride_2_stays_direct():
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(1, 10, 12, 4)).astype(np.float32))
    conv = winograd.Conv3x3(3, algorithm="winograd")
    v = conv.init(jax.random.PRNGKey(0), x)
    want = numpy_conv3x3(np.asarray(x), np.asarray(v["params"]["kernel"])) + np.asarray(v["params"]["bias"])
    np.testing.assert_allclose(np.asarray(conv.apply(v, x)), want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert not _uses_lax_conv(functools.partial(conv.apply, v), x)
    strided = winograd.Conv3x3(3, strides=2, algorithm="winograd")
    assert _uses_lax_conv(functools.partial(strided.apply, v), x)  # Winograd is stride 1 only


def test_auto_without_prepared_kernels_keeps_small_maps_and_narrow_channels_direct():
    rng = np.random.default_rng(8)
    small = jnp.asarray(rng.normal(size=(1, 30, 54, 128)).astype(np.float32))  # 1,620 pixels < 64x64
    narrow = jnp.asarray(rng.normal(size=(1, 64, 64, 16)).astype(np.float32))
    for x, features in ((small, 128), (narrow, 16)):
        conv = winograd.Conv3x3(features, algorithm="auto")
        v = conv.init(jax.random.PRNGKey(0), x)
        assert _uses_lax_conv(functools.partial(conv.apply, v), x)
    big = jax.ShapeDtypeStruct((1, 64, 64, 128), jnp.float32)
    conv = winograd.Conv3x3(128, algorithm="auto")
    v = jax.eval_shape(conv.init, jax.random.PRNGKey(0), big)
    assert _uses_lax_conv(conv.apply, v, big) == (jax.default_backend() != "cpu")


def test_prepared_kernel_is_recorded_once_and_then_read():
    rng = np.random.default_rng(9)
    x = jnp.asarray(rng.normal(size=(1, 16, 16, 128)).astype(np.float32))  # 16x16: Winograd only if prepared
    conv = winograd.Conv3x3(128, algorithm="auto")
    v = conv.init(jax.random.PRNGKey(0), x)
    assert set(v) == {"params"}  # init never writes prepared kernels
    out, written = conv.apply(v, x, mutable=[winograd.PREPARED])
    on_cpu = jax.default_backend() == "cpu"
    if not on_cpu:  # auto is lax everywhere but XLA:CPU: nothing to prepare
        assert not written.get(winograd.PREPARED)
        return
    u = written[winograd.PREPARED]["kernel"]
    np.testing.assert_array_equal(np.asarray(u), np.asarray(winograd.transform_kernel(v["params"]["kernel"])))
    prepared = {**v, **written}
    assert not _uses_lax_conv(functools.partial(conv.apply, prepared), x)
    direct = winograd.Conv3x3(128, algorithm="direct").apply(v, x)
    got = conv.apply(prepared, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(direct), rtol=0, atol=1e-4 * float(jnp.abs(direct).max()))
    # The conv really reads the collection: a zero kernel there leaves only the bias.
    zeroed = {**v, winograd.PREPARED: {"kernel": jnp.zeros_like(u)}}
    np.testing.assert_array_equal(np.asarray(conv.apply(zeroed, x)),
                                  np.broadcast_to(np.asarray(v["params"]["bias"]), direct.shape))
    # Below 16x16 the prepared kernel is not used.
    tiny_map = x[:, :8, :8]
    assert _uses_lax_conv(functools.partial(conv.apply, prepared), tiny_map)


class _Pair(nn.Module):
    """Two convs of one input through conv3x3_group (as memory.KeyValue)."""

    algorithm: str
    dtype: object = None

    @nn.compact
    def __call__(self, x):
        convs = [winograd.Conv3x3(n, algorithm=self.algorithm, dtype=self.dtype, name=name)
                 for n, name in ((128, "a"), (256, "b"))]
        return winograd.conv3x3_group(self, x, convs)


def test_conv3x3_group_shares_one_prepared_winograd_conv():
    rng = np.random.default_rng(10)
    x = jnp.asarray(rng.normal(size=(2, 16, 20, 128)).astype(np.float32))
    pair = _Pair("auto")
    v = pair.init(jax.random.PRNGKey(0), x)
    assert set(v["params"]) == {"a", "b"} and v["params"]["b"]["kernel"].shape == (3, 3, 128, 256)
    separate = [np.asarray(winograd.Conv3x3(n, algorithm="direct").apply({"params": v["params"][name]}, x))
                for n, name in ((128, "a"), (256, "b"))]
    # Without prepared kernels: each conv as on its own (16x20 is too small for the per-call transform).
    for got, want in zip(pair.apply(v, x), separate):
        np.testing.assert_array_equal(np.asarray(got), want)
    _, written = pair.apply(v, x, mutable=[winograd.PREPARED])
    if jax.default_backend() != "cpu":
        assert not written.get(winograd.PREPARED)
        return
    assert set(written[winograd.PREPARED]) == {"a+b"}  # one entry, not one per conv
    kernel = np.concatenate([v["params"]["a"]["kernel"], v["params"]["b"]["kernel"]], -1)
    np.testing.assert_array_equal(np.asarray(written[winograd.PREPARED]["a+b"]),
                                  np.asarray(winograd.transform_kernel(kernel)))
    np.testing.assert_array_equal(
        np.asarray(written[winograd.PREPARED]["a+b"]),
        np.asarray(winograd.transform_kernel(winograd.kernel_for(("a+b",), v["params"]))))
    prepared = {**v, **written}
    assert not _uses_lax_conv(pair.apply, prepared, x)
    for got, want in zip(pair.apply(prepared, x), separate):
        assert got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_unknown_algorithm_is_rejected():
    x = jnp.zeros((1, 4, 4, 2))
    with pytest.raises(ValueError, match="conv algorithm 'fft'"):
        winograd.Conv3x3(2, algorithm="fft").init(jax.random.PRNGKey(0), x)


def _decoder_inputs(rng, frames, objects, h=3, w=4):
    x = rng.normal(size=(frames * objects, h, w, 6)).astype(np.float32)
    res3 = rng.normal(size=(frames, 2 * h, 2 * w, 5)).astype(np.float32)
    res2 = rng.normal(size=(frames, 4 * h, 4 * w, 3)).astype(np.float32)
    return x, res3, res2


def test_decoder_skips_once_per_frame_equal_skips_per_object():
    # 2 frames x 3 objects: skips given per frame (shared branch) or repeated per object.
    rng = np.random.default_rng(7)
    x, res3, res2 = _decoder_inputs(rng, frames=2, objects=3)
    dec = Decoder(dim=4, conv_algorithm="direct")
    variables = dec.init(jax.random.PRNGKey(0), x, res3, res2)
    apply = jax.jit(dec.apply)
    shared = np.asarray(apply(variables, x, res3, res2))
    repeated = np.asarray(apply(variables, x, np.repeat(res3, 3, axis=0), np.repeat(res2, 3, axis=0)))
    assert shared.shape == (6, 48, 64, 2)
    np.testing.assert_allclose(shared, repeated, rtol=1e-6, atol=1e-6)
    # Object order: rows b*K .. b*K+K-1 belong to frame b (changing frame 1's skips leaves frame 0's rows).
    moved = np.asarray(apply(variables, x, res3 + np.array([0.0, 1.0], np.float32)[:, None, None, None], res2))
    np.testing.assert_array_equal(moved[:3], shared[:3])
    assert np.abs(moved[3:] - shared[3:]).max() > 1e-3


def test_decoder_rejects_skips_of_the_wrong_batch():
    rng = np.random.default_rng(8)
    x, res3, res2 = _decoder_inputs(rng, frames=2, objects=2)
    with pytest.raises(ValueError, match="one entry per frame"):
        Decoder(dim=4).init(jax.random.PRNGKey(0), x, res3[:1], res2)


def test_decoder_winograd_matches_direct_with_the_same_parameters():
    rng = np.random.default_rng(9)
    x, res3, res2 = _decoder_inputs(rng, frames=1, objects=2, h=2, w=3)
    direct = Decoder(dim=4, conv_algorithm="direct")
    variables = direct.init(jax.random.PRNGKey(1), x, res3, res2)
    fast = Decoder(dim=4, conv_algorithm="winograd")
    assert jax.tree_util.tree_structure(fast.init(jax.random.PRNGKey(1), x, res3, res2)) == \
        jax.tree_util.tree_structure(variables)
    a = np.asarray(direct.apply(variables, x, res3, res2))
    b = np.asarray(fast.apply(variables, x, res3, res2))
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * np.abs(a).max())


def test_auto_runs_bfloat16_convs_as_float32_winograd_on_cpu():
    # XLA:CPU's bfloat16 direct conv is slower than float32 Winograd: `auto` takes Winograd for
    # bfloat16 too (in float32, the output cast back), prepared and on the fly.
    rng = np.random.default_rng(12)
    x = jnp.asarray(rng.normal(size=(1, 8, 4100, 128)), jnp.bfloat16)  # above TAP_MATMUL_MAX_PIXELS
    conv = winograd.Conv3x3(128, algorithm="auto", dtype=jnp.bfloat16)
    v = conv.init(jax.random.PRNGKey(0), x)
    on_cpu = jax.default_backend() == "cpu"
    assert _uses_lax_conv(functools.partial(conv.apply, v), x) == (not on_cpu)
    _, written = conv.apply(v, x, mutable=[winograd.PREPARED])
    assert bool(written.get(winograd.PREPARED)) == on_cpu
    prepared = {**v, **written}
    if on_cpu:  # Winograd with the prepared kernel (zeroed there, only the bias is left), not tap matmuls
        zeroed = {**v, winograd.PREPARED: {"kernel": jnp.zeros_like(written[winograd.PREPARED]["kernel"])}}
        assert float(jnp.abs(conv.apply(zeroed, x) - v["params"]["bias"].astype(jnp.bfloat16)).max()) == 0
    want = numpy_conv3x3(np.asarray(x, np.float32), np.asarray(v["params"]["kernel"].astype(jnp.bfloat16), np.float32))
    for variables in (v, prepared):
        got = conv.apply(variables, x)
        assert got.dtype == jnp.bfloat16
        # Inputs and kernel rounded to bfloat16 as for the direct conv, the output rounded once.
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=8e-3 * np.abs(want).max())
    # Training in bfloat16: the gradients are those of the bfloat16 direct conv (`auto` before), up to
    # bfloat16 rounding (the bias gradient, a sum over the pixels in bfloat16, is the same op in both).
    g = jnp.asarray(rng.normal(size=(1, 8, 4100, 128)), jnp.float32)

    def loss(module, params, xx):
        return (module.apply({"params": params}, xx).astype(jnp.float32) * g).sum()

    direct = winograd.Conv3x3(128, algorithm="direct", dtype=jnp.bfloat16)
    got = jax.grad(lambda p, xx: loss(conv, p, xx), argnums=(0, 1))(v["params"], x)
    want = jax.grad(lambda p, xx: loss(direct, p, xx), argnums=(0, 1))(v["params"], x)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        b = np.asarray(b)
        np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=0, atol=2e-2 * np.abs(b).max())


def test_tap_matmuls_match_numpy():
    rng = np.random.default_rng(13)
    x = jnp.asarray(rng.normal(size=(2, 7, 9, 16)), jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 16, 24)), jnp.bfloat16)
    got = jax.jit(winograd.conv3x3_tap_matmuls)(x, kernel)
    want = numpy_conv3x3(np.asarray(x, np.float32), np.asarray(kernel, np.float32))
    assert got.dtype == jnp.bfloat16 and got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=8e-3 * np.abs(want).max())
    # Each tap's product in bfloat16 (float32 products made the sum memory-bound), summed in float32.
    text = str(jax.make_jaxpr(winograd.conv3x3_tap_matmuls)(x, kernel))
    assert text.count("preferred_element_type=bfloat16") == 9 and "add" in text
    # Gradients: the direct conv's (float32 references of the same bfloat16 numbers), written out,
    # not autodiff's through the taps: the input gradient as the taps of g with the flipped kernel,
    # the kernel gradient as conv_grad's.
    g = jnp.asarray(rng.normal(size=got.shape), jnp.bfloat16)
    vjp = jax.vjp(winograd.conv3x3_tap_matmuls, x, kernel)[1]
    ours = jax.jit(vjp)(g)
    f32 = [a.astype(jnp.float32) for a in (x, kernel, g)]
    direct = jax.vjp(lambda a, b: lax.conv_general_dilated(a, b, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                           precision=lax.Precision.HIGHEST), *f32[:2])[1](f32[2])
    for a, b in zip(ours, direct):
        assert a.dtype == jnp.bfloat16
        b = np.asarray(b)
        np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=0, atol=1e-2 * np.abs(b).max())
    backward = str(jax.make_jaxpr(vjp)(g))
    assert backward.count("preferred_element_type=bfloat16") == 9  # the input gradient's taps
    # float32 in: exact up to float32 rounding (the same sum as the direct conv).
    x32, k32 = x.astype(jnp.float32), kernel.astype(jnp.float32)
    np.testing.assert_allclose(np.asarray(winograd.conv3x3_tap_matmuls(x32, k32)), want, rtol=0,
                               atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("shape", [(2, 40, 50, 8), (1, 60, 21, 8)])
def test_flattened_tap_products_match_numpy_and_the_windowed_form(shape, monkeypatch):
    # Maps large enough for the products over the flattened padded map (the wrapped columns
    # and the extra bottom row must not leak into the output), forward and input gradient.
    assert tap_matmuls.uses_flat_products(*shape[1:3])
    rng = np.random.default_rng(17)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, shape[-1], 5)), jnp.float32)
    got = jax.jit(winograd.conv3x3_tap_matmuls)(x, kernel)
    want = numpy_conv3x3(np.asarray(x, np.float64), np.asarray(kernel, np.float64))
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=1e-5 * np.abs(want).max())
    g = jnp.asarray(rng.normal(size=got.shape), jnp.bfloat16)
    xb, kb = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    flat = jax.jit(jax.vjp(winograd.conv3x3_tap_matmuls, xb, kb)[1])(g)
    # The same products summed in the same order as one window per tap: the same bits.
    monkeypatch.setattr(tap_matmuls, "FLAT_MAX_ROWS_RATIO", 0.0)
    assert not tap_matmuls.uses_flat_products(*shape[1:3])
    windowed = jax.jit(lambda a, b: winograd.conv3x3_tap_matmuls(a, b))(x, kernel)  # a new trace
    np.testing.assert_array_equal(np.asarray(got), np.asarray(windowed))
    for a, b in zip(flat, jax.jit(jax.vjp(winograd.conv3x3_tap_matmuls, xb, kb)[1])(g)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


@pytest.mark.parametrize("shape", [(2, 7, 9, 16), (1, 8, 6, 16), (1, 1, 1, 16)])
def test_stride_2_tap_matmuls_match_numpy(shape):
    # A stride-2 conv with padding 1 is the stride-1 conv at even rows and columns.
    rng = np.random.default_rng(16)
    x = jnp.asarray(rng.normal(size=shape), jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 16, 24)), jnp.bfloat16)
    got = jax.jit(winograd.conv3x3_tap_matmuls, static_argnums=2)(x, kernel, 2)
    want = numpy_conv3x3(np.asarray(x, np.float32), np.asarray(kernel, np.float32))[:, ::2, ::2]
    assert got.dtype == jnp.bfloat16 and got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=8e-3 * np.abs(want).max())
    g = jnp.asarray(rng.normal(size=got.shape), jnp.bfloat16)
    ours = jax.vjp(lambda a, b: winograd.conv3x3_tap_matmuls(a, b, 2), x, kernel)[1](g)
    direct = jax.vjp(lambda a, b: winograd._lax_conv3x3(a, b, 2), x, kernel)[1](g)
    for a, b in zip(ours, direct):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    with pytest.raises(ValueError, match="strides=3"):
        winograd.conv3x3_tap_matmuls(x, kernel, 3)


def test_auto_runs_bfloat16_stride_2_convs_with_128_channels_as_tap_matmuls():
    x = jnp.asarray(np.random.default_rng(17).normal(size=(1, 12, 10, 128)), jnp.bfloat16)
    for features, dtype, taps in ((128, jnp.bfloat16, True), (64, jnp.bfloat16, False), (128, jnp.float32, False)):
        conv = winograd.Conv3x3(features, strides=2, algorithm="auto", dtype=dtype)
        v = conv.init(jax.random.PRNGKey(0), x)
        text = str(jax.make_jaxpr(functools.partial(conv.apply, v))(x))
        on_taps = "conv_general_dilated" not in text and text.count("dot_general") == 9
        assert on_taps == (taps and jax.default_backend() == "cpu"), (features, dtype)
        params = v["params"]
        want = winograd._lax_conv3x3(x.astype(dtype), params["kernel"].astype(dtype), 2) + params["bias"].astype(dtype)
        np.testing.assert_allclose(np.asarray(conv.apply(v, x), np.float32), np.asarray(want, np.float32),
                                   rtol=0, atol=2e-2 * float(jnp.abs(want).max()))


def test_auto_runs_small_bfloat16_maps_as_tap_matmuls_and_still_prepares():
    # bfloat16 on XLA:CPU, maps of <= TAP_MATMUL_MAX_PIXELS: 9 matrix products (no conv, no
    # Winograd) with 128+ channels; the prepared kernel is still recorded (prepare runs on a
    # small dummy frame) and a larger map uses it. 64 channels keep the prepared Winograd.
    on_cpu = jax.default_backend() == "cpu"
    rng = np.random.default_rng(14)
    small = jnp.asarray(rng.normal(size=(1, 15, 27, 256)), jnp.bfloat16)  # 405 pixels: STM's res4 at 240x432
    conv = winograd.Conv3x3(256, algorithm="auto", dtype=jnp.bfloat16)
    v = conv.init(jax.random.PRNGKey(0), small)
    out, written = conv.apply(v, small, mutable=[winograd.PREPARED])
    assert bool(written.get(winograd.PREPARED)) == on_cpu
    prepared = {**v, **written}
    text = str(jax.make_jaxpr(functools.partial(conv.apply, prepared))(small))
    assert ("conv_general_dilated" not in text and "dot_general" in text) == on_cpu
    kernel = np.asarray(v["params"]["kernel"].astype(jnp.bfloat16), np.float32)
    want = numpy_conv3x3(np.asarray(small, np.float32), kernel) + np.asarray(v["params"]["bias"])
    got = conv.apply(prepared, small)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=8e-3 * np.abs(want).max())
    large = jnp.asarray(rng.normal(size=(1, 8, 4100, 256)), jnp.bfloat16)  # 32,800 pixels: Winograd, prepared
    text = str(jax.make_jaxpr(functools.partial(conv.apply, prepared))(large))
    assert ("conv_general_dilated" not in text and "dot_general" in text) == on_cpu  # Winograd's GEMMs
    zeroed = {**v, winograd.PREPARED: {"kernel": jnp.zeros_like(written[winograd.PREPARED]["kernel"])}} if on_cpu else v
    if on_cpu:  # the large map reads the prepared kernel, the small one does not
        assert float(jnp.abs(conv.apply(zeroed, large) - v["params"]["bias"].astype(jnp.bfloat16)).max()) == 0
        np.testing.assert_array_equal(np.asarray(conv.apply(zeroed, small)), np.asarray(got))
        # 64 channels: too thin for the matrix units, the small map reads the prepared kernel.
        thin = winograd.Conv3x3(64, algorithm="auto", dtype=jnp.bfloat16)
        small64 = small[..., :64]
        v64 = thin.init(jax.random.PRNGKey(1), small64)
        u64 = thin.apply(v64, small64, mutable=[winograd.PREPARED])[1][winograd.PREPARED]["kernel"]
        zeroed64 = {**v64, winograd.PREPARED: {"kernel": jnp.zeros_like(u64)}}
        assert float(jnp.abs(thin.apply(zeroed64, small64) - v64["params"]["bias"].astype(jnp.bfloat16)).max()) == 0
    # float32 keeps Winograd on small maps too.
    conv32 = winograd.Conv3x3(256, algorithm="auto")
    written32 = conv32.apply(v, small.astype(jnp.float32), mutable=[winograd.PREPARED])[1]
    text = str(jax.make_jaxpr(functools.partial(conv32.apply, {**v, **written32}))(small.astype(jnp.float32)))
    assert "dot_general" in text and "conv_general_dilated" not in text if on_cpu else True


def test_conv3x3_group_runs_small_bfloat16_maps_as_tap_matmul_convs():
    rng = np.random.default_rng(15)
    x = jnp.asarray(rng.normal(size=(1, 8, 14, 256)), jnp.bfloat16)
    pair = _Pair("auto", jnp.bfloat16)
    v = pair.init(jax.random.PRNGKey(0), x)
    _, written = pair.apply(v, x, mutable=[winograd.PREPARED])
    prepared = {**v, **written}
    got = pair.apply(prepared, x)
    for out, name in zip(got, ("a", "b")):
        p = v["params"][name]
        want = numpy_conv3x3(np.asarray(x, np.float32), np.asarray(p["kernel"].astype(jnp.bfloat16), np.float32))
        want = want + np.asarray(p["bias"])
        assert out.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=0, atol=8e-3 * np.abs(want).max())
    if jax.default_backend() == "cpu":
        text = str(jax.make_jaxpr(functools.partial(pair.apply, prepared))(x))
        # 9 products for each conv, the kernels not joined (that copied them in every call).
        assert "conv_general_dilated" not in text and "concatenate" not in text and text.count("dot_general") == 18
