"""STM decoder: shapes, PyTorch-style bilinear upsampling, use of the skips, ResBlock."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from munet_jax.models.decoder import Decoder, ResBlock, upsample_bilinear


def _torch_bilinear_1d_weights(n_in, factor):
    """[n_out, n_in] interpolation matrix of F.interpolate(align_corners=False), from its formula."""
    n_out = n_in * factor
    mat = np.zeros((n_out, n_in))
    for x in range(n_out):
        src = max((x + 0.5) / factor - 0.5, 0.0)  # PyTorch clamps negative source coords to 0
        i0 = int(np.floor(src))
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        mat[x, i0] += 1.0 - lam
        mat[x, i1] += lam
    return mat


def _torch_bilinear(img, factor):
    """img [B, H, W, C] -> [B, fH, fW, C], separable: rows then columns."""
    wy = _torch_bilinear_1d_weights(img.shape[1], factor)
    wx = _torch_bilinear_1d_weights(img.shape[2], factor)
    return np.einsum("yh,bhwc,xw->byxc", wy, img, wx)


def _conv3x3(img, kern, bias):
    """NumPy zero-padded 3x3 correlation: img [H, W, C], kern [3, 3, C, O]."""
    pad = np.pad(img, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros(img.shape[:2] + (kern.shape[-1],))
    for dy in range(3):
        for dx in range(3):
            out += pad[dy : dy + img.shape[0], dx : dx + img.shape[1]] @ kern[dy, dx]
    return out + bias


def _inputs(rng, b=1, h=2, w=3, c=6, c3=5, c2=4):
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    return f(b, h, w, c), f(b, 2 * h, 2 * w, c3), f(b, 4 * h, 4 * w, c2)


@pytest.mark.parametrize("factor", [2, 4])
def test_upsampling_matches_pytorch_align_corners_false(factor):
    rng = np.random.default_rng(0)
    img = rng.standard_normal((2, 3, 5, 2)).astype(np.float32)
    got = np.asarray(upsample_bilinear(jnp.asarray(img), factor))
    np.testing.assert_allclose(got, _torch_bilinear(img, factor), rtol=1e-5, atol=1e-5)


def test_one_by_one_input_upsamples_to_constant():
    img = np.full((1, 1, 1, 1), 3.0, np.float32)
    np.testing.assert_allclose(np.asarray(upsample_bilinear(img, 4)), 3.0)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_upsampling_equals_jax_image_resize_and_its_gradient(factor):
    # The stencil must give resize's numbers (float32: up to rounding) on odd sizes, and the
    # same gradient (the decoder trains through it).
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 5, 7, 3)), jnp.float32)
    out_shape = (2, 5 * factor, 7 * factor, 3)
    want = jax.image.resize(x, out_shape, method="bilinear")
    np.testing.assert_allclose(np.asarray(upsample_bilinear(x, factor)), np.asarray(want), rtol=0, atol=2e-6)
    g = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)
    ours = jax.vjp(lambda v: upsample_bilinear(v, factor), x)[1](g)[0]
    theirs = jax.vjp(lambda v: jax.image.resize(v, out_shape, method="bilinear"), x)[1](g)[0]
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=0, atol=1e-5)


def test_bfloat16_upsampling_is_rounded_once_from_the_exact_interpolation():
    # bfloat16 in and out, interpolated in float32: every output is the exact value rounded to
    # bfloat16 (within half a unit in the last place: 2^-8 of its magnitude), where resize's bfloat16
    # products were off by up to 0.06 on these inputs. No matrix products (the speed-up on CPU).
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((1, 6, 9, 4)) * 3, jnp.bfloat16)
    got = upsample_bilinear(x, 2)
    assert got.dtype == jnp.bfloat16
    exact = _torch_bilinear(np.asarray(x, np.float64), 2)
    got = np.asarray(got, np.float64)
    assert np.all(np.abs(got - exact) <= 2.0**-8 * np.abs(exact) * (1 + 1e-6))
    assert "dot_general" not in str(jax.make_jaxpr(lambda v: upsample_bilinear(v, 2))(x))


def test_upsampling_factor_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="factor"):
        upsample_bilinear(jnp.zeros((1, 2, 2, 1)), 0)


def test_decoder_shape_and_final_4x_bilinear():
    rng = np.random.default_rng(1)
    x, res3, res2 = _inputs(rng)
    dec = Decoder(dim=4)
    variables = dec.init(jax.random.PRNGKey(0), x, res3, res2)
    logits, state = dec.apply(variables, x, res3, res2, capture_intermediates=True)
    assert logits.shape == (1, 32, 48, 2) and logits.dtype == jnp.float32
    p2 = np.asarray(state["intermediates"]["pred"]["__call__"][0])  # [1, 8, 12, 2] before upsampling
    assert p2.shape == (1, 8, 12, 2)
    np.testing.assert_allclose(np.asarray(logits), _torch_bilinear(p2, 4), rtol=1e-5, atol=1e-5)


def test_refine_stages_use_the_skips():
    rng = np.random.default_rng(2)
    x, res3, res2 = _inputs(rng)
    dec = Decoder(dim=4)
    variables = dec.init(jax.random.PRNGKey(1), x, res3, res2)
    base = np.asarray(dec.apply(variables, x, res3, res2))
    changed3 = np.asarray(dec.apply(variables, x, res3 + 1.0, res2))
    changed2 = np.asarray(dec.apply(variables, x, res3, res2 + 1.0))
    assert np.abs(changed3 - base).max() > 1e-4
    assert np.abs(changed2 - base).max() > 1e-4
    # Every conv of STM's structure has parameters of the expected shape.
    p = variables["params"]
    assert p["conv_read"]["kernel"].shape == (3, 3, 6, 4)
    assert p["refine3"]["conv_skip"]["kernel"].shape == (3, 3, 5, 4)
    assert p["refine2"]["conv_skip"]["kernel"].shape == (3, 3, 4, 4)
    assert p["pred"]["kernel"].shape == (3, 3, 4, 2)
    assert set(p["refine3"]) == {"conv_skip", "res_skip", "res_merge"}


def test_decoder_bfloat16_is_finite_and_close():
    rng = np.random.default_rng(3)
    x, res3, res2 = _inputs(rng)
    variables = Decoder(dim=4).init(jax.random.PRNGKey(2), x, res3, res2)
    ref = np.asarray(Decoder(dim=4).apply(variables, x, res3, res2))
    out = Decoder(dim=4, dtype=jnp.bfloat16).apply(variables, x, res3, res2)
    assert out.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(out)))
    np.testing.assert_allclose(np.asarray(out), ref, atol=0.1 * np.abs(ref).max() + 0.05)


def test_decoder_rejects_misaligned_skips():
    rng = np.random.default_rng(4)
    x, res3, res2 = _inputs(rng)
    with pytest.raises(ValueError, match="multiple of 16"):
        Decoder(dim=4).init(jax.random.PRNGKey(0), x, res3[:, :-1], res2)


@pytest.mark.parametrize("cin", [3, 4])
def test_resblock_formula(cin):
    """x + conv2(relu(conv1(relu(x)))), with a 3x3 projection of x when cin != dim."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 4, 3, cin)).astype(np.float32)
    block = ResBlock(dim=4)
    params = block.init(jax.random.PRNGKey(0), x)["params"]
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.standard_normal(p.shape) * 0.5, jnp.float32), params)
    got = np.asarray(block.apply({"params": params}, x))[0]
    np_p = jax.tree_util.tree_map(np.asarray, params)
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    r = _conv3x3(relu(x[0]), np_p["conv1"]["kernel"], np_p["conv1"]["bias"])
    r = _conv3x3(relu(r), np_p["conv2"]["kernel"], np_p["conv2"]["bias"])
    skip = x[0] if cin == 4 else _conv3x3(x[0], np_p["downsample"]["kernel"], np_p["downsample"]["bias"])
    assert ("downsample" in np_p) == (cin != 4)
    np.testing.assert_allclose(got, skip + r, rtol=1e-4, atol=1e-4)
