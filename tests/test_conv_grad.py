"""Kernel gradients as GEMMs and strided input gradients by phases (munet_jax.models.conv_grad)
against NumPy float64 and lax's own gradients: single convs of every kind the model has, the
drop-in's choice, Winograd's backward pass, and the whole model's training gradients."""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from munet_jax.models import conv_grad, winograd

NHWC = ("NHWC", "HWIO", "NHWC")


def numpy_kernel_gradient(x, g, kh, kw, stride, padding):
    """d sum(conv(x, K) * g) / dK in float64, one output pixel at a time (the definition)."""
    (pt, pb), (pl, pr) = padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    n, ho, wo, k = g.shape
    out = np.zeros((kh, kw, x.shape[-1], k))
    for y in range(ho):
        for x_ in range(wo):
            patch = xp[:, y * stride: y * stride + kh, x_ * stride: x_ * stride + kw]  # [N, kh, kw, C]
            out += np.einsum("nijc,nk->ijck", patch, g[:, y, x_].astype(np.float64))
    return out


def lax_grads(x, kernel, g, stride, padding):
    """(dx, dkernel) of sum(conv * g) by lax's own transposes."""
    _, vjp = jax.vjp(lambda a, b: lax.conv_general_dilated(a, b, (stride, stride), padding, dimension_numbers=NHWC,
                                                           precision=lax.Precision.HIGHEST), x, kernel)
    return vjp(g)


CASES = [
    # (N, H, W, C, K, kh, stride, padding): ResNet's 3x3 / 1x1 / strided 1x1 downsample / 7x7 stem,
    # odd sizes, asymmetric padding.
    (2, 9, 11, 5, 4, 3, 1, ((1, 1), (1, 1))),
    (2, 8, 10, 6, 7, 1, 1, ((0, 0), (0, 0))),
    (3, 9, 7, 4, 6, 1, 2, ((0, 0), (0, 0))),
    (1, 15, 13, 4, 8, 7, 2, ((3, 3), (3, 3))),
    (2, 10, 9, 3, 5, 3, 2, ((1, 1), (1, 1))),
    (2, 7, 8, 3, 2, 3, 1, ((0, 1), (2, 0))),
]


@pytest.mark.parametrize("case", CASES)
def test_kernel_gradient_gemm_matches_numpy_and_lax(case):
    n, h, w, c, k, ks, stride, padding = case
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, h, w, c)).astype(np.float32)
    kernel = rng.normal(size=(ks, ks, c, k)).astype(np.float32)
    out_shape = jax.eval_shape(lambda: lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                                                dimension_numbers=NHWC)).shape
    g = rng.normal(size=out_shape).astype(np.float32)
    got = np.asarray(jax.jit(conv_grad.kernel_gradient_gemm, static_argnums=(2, 3, 4))(
        x, g, (ks, ks), (stride, stride), padding))
    expected = numpy_kernel_gradient(x, g, ks, ks, stride, padding)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    _, lax_dk = lax_grads(x, kernel, g, stride, padding)
    np.testing.assert_allclose(got, np.asarray(lax_dk), rtol=0, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("case", CASES)
def test_kernel_gradient_gemm_in_bfloat16_matches_numpy(case):
    # bfloat16 operands take pixel_gram's other contraction (float32 accumulation): the same
    # values as NumPy's float64 sums of the same bfloat16 numbers, to float32 rounding.
    n, h, w, c, k, ks, stride, padding = case
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(n, h, w, c)), jnp.bfloat16)
    out_shape = jax.eval_shape(lambda: lax.conv_general_dilated(
        x, jnp.zeros((ks, ks, c, k), jnp.bfloat16), (stride, stride), padding, dimension_numbers=NHWC)).shape
    g = jnp.asarray(rng.normal(size=out_shape), jnp.bfloat16)
    got = np.asarray(jax.jit(conv_grad.kernel_gradient_gemm, static_argnums=(2, 3, 4))(
        x, g, (ks, ks), (stride, stride), padding))
    expected = numpy_kernel_gradient(np.asarray(x, np.float64), np.asarray(g, np.float64), ks, ks, stride, padding)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pixel_gram_matches_numpy_and_contracts_bfloat16_per_image(dtype):
    rng = np.random.default_rng(2)
    a = jnp.asarray(rng.normal(size=(3, 5, 7, 4)), dtype)
    b = jnp.asarray(rng.normal(size=(3, 5, 7, 6)), dtype)
    got = jax.jit(conv_grad.pixel_gram)(a, b)
    want = np.einsum("nhwc,nhwk->ck", np.asarray(a, np.float64), np.asarray(b, np.float64))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-5 * np.abs(want).max())
    # bfloat16: one contraction over (image, pixel) of [N, H*W, C] (XLA:CPU keeps it on the
    # matrix units); float32: the flat [N*H*W, C] product.
    (eqn,) = [e for e in jax.make_jaxpr(conv_grad.pixel_gram)(a, b).eqns if e.primitive.name == "dot_general"]
    (contract_a, _), _ = eqn.params["dimension_numbers"]
    assert tuple(contract_a) == ((0, 1) if dtype == jnp.bfloat16 else (0,))


def numpy_input_gradient(kernel, g, x_hw, strides, padding):
    """d sum(conv(x, K) * g) / dx in float64: each output pixel's g spread back over its window."""
    (pt, pb), (pl, pr) = padding
    (sh, sw), (h, w) = strides, x_hw
    kh, kw = kernel.shape[:2]
    n, ho, wo, _ = g.shape
    dxp = np.zeros((n, h + pt + pb + kh, w + pl + pr + kw, kernel.shape[2]))
    for y in range(ho):
        for x_ in range(wo):
            dxp[:, y * sh: y * sh + kh, x_ * sw: x_ * sw + kw] += np.einsum(
                "ijck,nk->nijc", kernel.astype(np.float64), g[:, y, x_].astype(np.float64))
    return dxp[:, pt:pt + h, pl:pl + w]


PHASE_CASES = [
    # (N, H, W, C, K, (kh, kw), strides, padding): the ResNet stem (7x7 / 2) and its 3x3 / 2 convs,
    # odd and even sizes, stride 3, different strides per axis, asymmetric padding, a kernel
    # smaller than the stride (phases no tap reaches), padding larger than the kernel's half.
    (2, 15, 13, 4, 8, (7, 7), (2, 2), ((3, 3), (3, 3))),
    (1, 16, 14, 4, 8, (7, 7), (2, 2), ((3, 3), (3, 3))),
    (2, 10, 9, 3, 5, (3, 3), (2, 2), ((1, 1), (1, 1))),
    (1, 11, 10, 2, 3, (5, 5), (3, 3), ((2, 2), (2, 2))),
    (2, 9, 12, 3, 4, (3, 5), (2, 1), ((1, 1), (2, 2))),
    (1, 9, 8, 3, 2, (3, 3), (2, 2), ((0, 1), (2, 0))),
    (1, 10, 11, 2, 3, (2, 2), (3, 3), ((0, 0), (1, 0))),
    (1, 8, 9, 2, 3, (3, 3), (2, 2), ((3, 2), (0, 3))),
]


@pytest.mark.parametrize("case", PHASE_CASES)
def test_input_gradient_phases_matches_numpy_and_lax(case):
    n, h, w, c, k, (kh, kw), strides, padding = case
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, h, w, c)).astype(np.float32)
    kernel = rng.normal(size=(kh, kw, c, k)).astype(np.float32)
    out_shape = jax.eval_shape(lambda: lax.conv_general_dilated(x, kernel, strides, padding,
                                                                dimension_numbers=NHWC)).shape
    g = rng.normal(size=out_shape).astype(np.float32)
    got = np.asarray(jax.jit(conv_grad.input_gradient_phases, static_argnums=(2, 3, 4))(
        g, kernel, (h, w), strides, padding))
    expected = numpy_input_gradient(kernel, g, (h, w), strides, padding)
    assert got.shape == expected.shape == x.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    _, vjp = jax.vjp(lambda a: lax.conv_general_dilated(a, kernel, strides, padding, dimension_numbers=NHWC,
                                                        precision=lax.Precision.HIGHEST), x)
    np.testing.assert_allclose(got, np.asarray(vjp(g)[0]), rtol=0, atol=1e-5 * np.abs(expected).max())


def test_which_convs_get_phase_input_gradients_on_cpu():
    assert jax.default_backend() == "cpu"
    assert conv_grad.uses_phases((7, 7, 4, 64), (2, 2))  # the stem
    assert conv_grad.uses_phases((3, 3, 128, 128), (2, 2))  # layer2 / layer3's first 3x3
    assert conv_grad.uses_phases((3, 3, 8, 8), (1, 2))
    assert not conv_grad.uses_phases((1, 1, 256, 512), (2, 2))  # the strided 1x1 projection: lax's
    assert not conv_grad.uses_phases((3, 3, 128, 128), (1, 1))
    with conv_grad.lax_gradients():
        assert not conv_grad.uses_phases((7, 7, 4, 64), (2, 2))


@pytest.mark.parametrize("case", CASES)
def test_drop_in_has_lax_values_and_gradients(case, monkeypatch):
    # Forced to the GEMM form for every shape (on CPU it is chosen by size; see the next test).
    monkeypatch.setattr(conv_grad, "GEMM_MIN_WORK", 0)
    n, h, w, c, k, ks, stride, padding = case
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(n, h, w, c)).astype(np.float32))
    kernel = jnp.asarray(rng.normal(size=(ks, ks, c, k)).astype(np.float32))

    def conv(a, b):
        return conv_grad.conv_general_dilated(a, b, (stride, stride), padding, dimension_numbers=NHWC)

    assert "custom_vjp" in str(jax.make_jaxpr(conv)(x, kernel))
    y, vjp = jax.vjp(conv, x, kernel)
    expected_y = lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=NHWC)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected_y))  # lax's own forward pass
    g = jnp.asarray(rng.normal(size=y.shape).astype(np.float32))
    for got, want in zip(jax.jit(vjp)(g), lax_grads(x, kernel, g, stride, padding)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5 * np.abs(np.asarray(want)).max())


def test_which_convs_get_gemm_kernel_gradients_on_cpu():
    assert jax.default_backend() == "cpu"
    # Every 1x1 conv; wider kernels from C * K * Ho * Wo >= 2^27 (the measured crossover).
    assert conv_grad.uses_gemm((1, 25, 25, 1024), (1, 1, 1024, 1), (1, 25, 25, 1))
    assert conv_grad.uses_gemm((6, 100, 100, 128), (3, 3, 128, 128), (6, 100, 100, 128))
    assert conv_grad.uses_gemm((6, 50, 50, 512), (3, 3, 512, 512), (6, 50, 50, 512))
    assert not conv_grad.uses_gemm((6, 25, 25, 256), (3, 3, 256, 256), (6, 25, 25, 256))
    assert not conv_grad.uses_gemm((6, 400, 400, 4), (7, 7, 4, 64), (6, 200, 200, 64))
    # bfloat16: also every conv with 128+ channels in and out (lax's is widened to float32 there).
    assert conv_grad.uses_gemm((6, 25, 25, 256), (3, 3, 256, 256), (6, 25, 25, 256), jnp.bfloat16)
    assert conv_grad.uses_gemm((6, 50, 50, 128), (3, 3, 128, 128), (6, 50, 50, 128), jnp.bfloat16)
    assert not conv_grad.uses_gemm((6, 100, 100, 64), (3, 3, 64, 64), (6, 100, 100, 64), jnp.bfloat16)
    assert not conv_grad.uses_gemm((6, 50, 50, 128), (3, 3, 128, 128), (6, 50, 50, 128), jnp.float32)


def test_lax_gradients_context_turns_the_gemm_form_off():
    x, kernel = jnp.ones((1, 8, 8, 4)), jnp.ones((1, 1, 4, 4))

    def traced():
        return str(jax.make_jaxpr(lambda a: conv_grad.conv_general_dilated(a, kernel, (1, 1), "SAME",
                                                                           dimension_numbers=NHWC))(x))

    with conv_grad.lax_gradients():
        assert "custom_vjp" not in traced()
        assert not conv_grad.uses_gemm((1, 8, 8, 4), (1, 1, 4, 4), (1, 8, 8, 4))
    assert "custom_vjp" in traced()


def test_drop_in_leaves_other_convs_to_lax():
    x = jnp.ones((1, 8, 8, 4))
    k1 = jnp.ones((1, 1, 4, 4))
    k3 = jnp.ones((3, 3, 4, 4))

    def jaxpr(fn):
        return str(jax.make_jaxpr(fn)(x))

    # 'SAME' string padding (flax's default) is resolved and handled.
    assert "custom_vjp" in jaxpr(lambda a: conv_grad.conv_general_dilated(a, k1, (1, 1), "SAME", dimension_numbers=NHWC))
    # A small 3x3, dilation, feature groups, another layout: lax's own conv, nothing wrapped.
    for fn in (
        lambda a: conv_grad.conv_general_dilated(a, k3, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC),
        lambda a: conv_grad.conv_general_dilated(a, k3, (1, 1), ((2, 2), (2, 2)), rhs_dilation=(2, 2),
                                                 dimension_numbers=NHWC),
        lambda a: conv_grad.conv_general_dilated(a, jnp.ones((1, 1, 2, 4)), (1, 1), "SAME", dimension_numbers=NHWC,
                                                 feature_group_count=2),
        lambda a: conv_grad.conv_general_dilated(a.transpose(0, 3, 1, 2), k1.transpose(3, 2, 0, 1), (1, 1), "SAME",
                                                 dimension_numbers=("NCHW", "OIHW", "NCHW")),
    ):
        text = jaxpr(fn)
        assert "custom_vjp" not in text and "conv_general_dilated" in text


def test_flax_conv_with_the_drop_in_has_nn_conv_gradients():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 12, 10, 8)).astype(np.float32))
    plain = nn.Conv(16, (1, 1), strides=(2, 2))
    gemm = nn.Conv(16, (1, 1), strides=(2, 2), conv_general_dilated=conv_grad.conv_general_dilated)
    variables = plain.init(jax.random.PRNGKey(0), x)

    def loss(module, params):
        return jnp.sum(jnp.sin(module.apply({"params": params}, x)))

    want = jax.grad(lambda p: loss(plain, p))(variables["params"])
    got = jax.jit(jax.grad(lambda p: loss(gemm, p)))(variables["params"])
    assert "custom_vjp" in str(jax.make_jaxpr(lambda p: loss(gemm, p))(variables["params"]))
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5 * np.abs(np.asarray(b)).max())


@pytest.mark.parametrize("min_work", [0, 2**62])
def test_winograd_backward_matches_direct_conv(min_work, monkeypatch):
    # The input gradient as a Winograd conv, the kernel gradient as GEMMs (0) or lax's (2^62).
    monkeypatch.setattr(conv_grad, "GEMM_MIN_WORK", min_work)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 13, 10, 6)).astype(np.float32))
    kernel = jnp.asarray(rng.normal(size=(3, 3, 6, 5)).astype(np.float32))
    g = jnp.asarray(rng.normal(size=(2, 13, 10, 5)).astype(np.float32))
    _, vjp = jax.vjp(winograd.conv3x3, x, kernel)
    for got, want in zip(jax.jit(vjp)(g), lax_grads(x, kernel, g, 1, ((1, 1), (1, 1)))):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-4 * np.abs(np.asarray(want)).max())


def test_model_training_gradients_match_lax(monkeypatch):
    """The tiny MUNet's clip-loss gradients with every conv's kernel gradient as GEMMs and the
    strided convs' input gradients by phases against lax's: every conv kind of the network (stem, 1x1, strided, 3x3, motion net, MSAM, decoder).
    Direct convs on both sides: Winograd's own forward rounding (~2e-5) is amplified to a few
    percent in some of this random network's gradients, which would hide a real difference."""
    import ml_collections

    from munet_jax.models.config import tiny_munet_config
    from munet_jax.models.munet import build_model, init_variables
    from munet_jax.training.step import clip_loss

    rng = np.random.default_rng(4)
    batch = {
        "frames": jnp.asarray(rng.integers(0, 256, size=(1, 3, 32, 32, 3), dtype=np.uint8)),
        "masks": jnp.asarray(rng.integers(0, 3, size=(1, 3, 32, 32), dtype=np.uint8)),
        "object_valid": jnp.asarray([[True, True]]),
    }
    loss_cfg = ml_collections.ConfigDict({"kind": "bsce_iou", "top_fraction": 0.4, "iou_weight": 1.0})

    phases = conv_grad.input_gradient_phases
    phase_calls = []
    monkeypatch.setattr(conv_grad, "input_gradient_phases", lambda *args: phase_calls.append(args[1].shape) or phases(*args))

    def grads(fast: bool):
        # fast: every kernel gradient as GEMMs and strided input gradients by phases; else lax's.
        monkeypatch.setattr(conv_grad, "uses_gemm", lambda *shapes: fast)
        phase_calls.clear()
        cfg = tiny_munet_config()
        cfg.conv3x3 = "direct"
        model = build_model(cfg)
        variables = init_variables(model, 0, (32, 32), 2)

        def loss(params):
            return clip_loss(model, {**variables, "params": params}, batch, loss_cfg)[0]

        with contextlib.nullcontext() if fast else conv_grad.lax_gradients():
            text = str(jax.make_jaxpr(loss)(variables["params"]))
            assert ("name=conv_cpu_gradients" in text) == fast
            result = jax.jit(jax.grad(loss))(variables["params"])
        # Phases for the strided convs that need an input gradient (Enc-R's stem for the mask; layer2 / 3).
        assert bool(phase_calls) == fast and (not fast or (7, 7, 4, 8) in phase_calls), phase_calls
        return result

    want = grads(False)
    got = grads(True)
    leaves_got, leaves_want = jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)
    assert len(leaves_got) == len(leaves_want) > 50
    overall = max(np.abs(np.asarray(b)).max() for b in leaves_want)
    for (path, a), b in zip(leaves_got, leaves_want):
        a, b = np.asarray(a), np.asarray(b)
        # Relative to the leaf, and to the whole gradient for leaves that are zero but for rounding
        # (the key conv's bias: the memory read's softmax is invariant to it).
        error, bound = np.abs(a - b).max(), 1e-5 * np.abs(b).max() + 1e-7 * overall
        assert error <= bound, (jax.tree_util.keystr(path), error, bound)


def test_which_convs_run_as_matrix_products_on_cpu():
    assert jax.default_backend() == "cpu"
    # bfloat16 unpadded 1x1 convs only: XLA:CPU's bfloat16 dot uses the matrix units, its conv does not.
    assert conv_grad.uses_matmul((1, 1, 64, 256), ((0, 0), (0, 0)), jnp.bfloat16)
    assert not conv_grad.uses_matmul((1, 1, 64, 256), ((0, 0), (0, 0)), jnp.float32)
    assert not conv_grad.uses_matmul((1, 1, 64, 256), ((1, 1), (1, 1)), jnp.bfloat16)
    assert not conv_grad.uses_matmul((3, 3, 64, 64), ((1, 1), (1, 1)), jnp.bfloat16)
    with conv_grad.lax_gradients():
        assert not conv_grad.uses_matmul((1, 1, 64, 256), ((0, 0), (0, 0)), jnp.bfloat16)


@pytest.mark.parametrize("shape,stride", [((2, 8, 10, 6), 1), ((3, 9, 7, 4), 2), ((1, 1, 1, 3), 2), ((1, 5, 6, 8), 3)])
def test_bfloat16_1x1_conv_as_matrix_product_matches_numpy_and_lax(shape, stride):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=shape), jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(1, 1, shape[-1], 5)), jnp.bfloat16)

    def conv(a, b):
        return conv_grad.conv_general_dilated(a, b, (stride, stride), "VALID", dimension_numbers=NHWC)

    text = str(jax.make_jaxpr(conv)(x, kernel))
    assert "dot_general" in text and "conv_general_dilated" not in text
    y, vjp = jax.vjp(conv, x, kernel)
    # NumPy float64 on the same bfloat16 values: the strided pixels times the kernel.
    x64, k64 = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    want = x64[:, ::stride, ::stride] @ k64[0, 0]
    lax_y = lax.conv_general_dilated(x, kernel, (stride, stride), "VALID", dimension_numbers=NHWC)
    assert y.dtype == jnp.bfloat16 and y.shape == lax_y.shape == want.shape
    scale = np.abs(want).max()
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=0, atol=1e-2 * scale)  # bfloat16 output rounding
    np.testing.assert_allclose(np.asarray(y, np.float64), np.asarray(lax_y, np.float64), rtol=0, atol=1e-2 * scale)
    g = jnp.asarray(rng.normal(size=y.shape), jnp.bfloat16)
    got_dx, got_dk = jax.jit(vjp)(g)
    want_dx, want_dk = lax_grads(x.astype(jnp.float32), kernel.astype(jnp.float32), g.astype(jnp.float32), stride,
                                 ((0, 0), (0, 0)))
    for got, ref in ((got_dx, want_dx), (got_dk, want_dk)):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref), rtol=0,
                                   atol=2e-2 * np.abs(np.asarray(ref)).max())
