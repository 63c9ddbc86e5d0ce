"""Convolutions that run fast on XLA:CPU: kernel gradients as matrix products, strided
convs' input gradients as stride-1 convs (training), bfloat16 1x1 convs as matrix products.

XLA:CPU computes a convolution's kernel gradient (the "backward filter") as
another convolution, with the output gradient as the kernel. On wide layers over
large maps that runs far below the CPU's GEMM speed. Measured on a 2-core AMD
EPYC (AVX2), 6 frames, 3x3 convs, C in = K out channels (forward / lax's kernel
gradient / this module's, ms):

    100x100, 128 ->  128     100 /   735 /  243
    100x100, 256 ->  256     402 /  3429 /  714      (the decoder at stride 4 of a 400x400 crop)
     50x50,  512 ->  512     477 /  2824 /  557
     25x25,  256 ->  256      26 /    36 /   62      (lax is faster here: kept)
    100x100, 1x1, 64 -> 256   -  /   230 /   16      (ResNet's expanding 1x1)

The kernel gradient is, for every tap (i, j) of a kh x kw kernel, one GEMM over
the output pixels:

    dK[i, j] = X_ij^T dY        X_ij [N*Ho*Wo, C]: the input pixel that tap (i, j) of each
                                output pixel reads (a strided slice of the padded input),
                                dY [N*Ho*Wo, K]: the output gradient

so it costs the forward conv's multiply-adds at GEMM speed, plus kh*kw slice
copies of the input (C values per pixel against 2*K FLOPs per copied value).

The input gradient of a strided conv is, by autodiff, a convolution of the output
gradient dilated with zeros (s - 1 between values): s_h * s_w times the work, and
XLA:CPU's dilated-input convs run slowly besides. Split by output phase it is
s_h * s_w stride-1 convs without zeros (`input_gradient_phases`). Measured as above
(lax / phases, ms): Enc-R's 7x7 / 2 stem, 3 x 400x400 x 4 -> 64: 154 / 30; layer2's
3x3 / 2, 3 x 100x100, 128 -> 128: 56 / 28; layer3's, 6 x 50x50, 256 -> 256: 59 / 28.
For the input rows u = s a + p of phase p, with left padding pl, the taps
i = r + s m (r = (p + pl) mod s) are the only ones that reach them:

    dx[s a + p] = sum_m dY[a + q - m] W[r + s m]^T,   q = (p + pl - r) / s

a stride-1 correlation of dY with the flipped sub-kernel W[r::s], per dimension;
the phases are then interleaved.

In bfloat16, XLA:CPU runs a dot on the CPU's bfloat16 matrix units (AMX on a Xeon)
but a conv as float32 vector code after widening its operands, so an unpadded 1x1
conv is run as one matrix product there (`uses_matmul`, `conv1x1_matmul`): on a
Xeon with AMX, ResNet's 1x1 shapes ran at 650-1070 GFLOP/s instead of 100-180.
A kernel gradient's product X^T dY over N*Ho*Wo pixels needs the same care: as one
flat [N*Ho*Wo, C]^T [N*Ho*Wo, K] product (autodiff's form) XLA:CPU widened it to
float32 and ran it 2.5-7x slower than as a contraction over (image, pixel) of
[N, Ho*Wo, C] and [N, Ho*Wo, K] (`pixel_gram`; 6 x 400x400 training step in bfloat16,
with `munet_jax.models.affine`'s float32 sums: 38.9 -> 28.3 s).

`conv_general_dilated` is `lax.conv_general_dilated`'s drop-in (flax's
`nn.Conv(conv_general_dilated=...)`): the forward pass is lax's (bfloat16 1x1 convs
on XLA:CPU: a matrix product); on XLA:CPU the
kernel gradient is the GEMM form where it wins (`uses_gemm`: every 1x1 conv;
wider kernels when C * K * Ho * Wo >= GEMM_MIN_WORK, or in bfloat16 with 128+ channels) and a strided conv's input
gradient is the phase form (`uses_phases`: stride > 1, kernel wider than 1x1);
lax's elsewhere. GPU and TPU libraries have fast backward kernels, so other
backends always get lax's. Same values up to float rounding (tested against
lax's gradients).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

# C * K * Ho * Wo from which a kh x kw (> 1x1) kernel's gradient runs as GEMMs on
# XLA:CPU: measured above, 128 x 128 x 100 x 100 (1.6e8) is 3x faster, 256 x 256 x 25 x 25
# (4.1e7) and 128 x 128 x 50 x 50 (4.1e7) 1.7x slower, 512 x 512 x 25 x 25 (1.6e8) 1.6x faster.
GEMM_MIN_WORK = 2**27
# In bfloat16 the GEMM form (`pixel_gram`, on the matrix units) wins from 128 channels in and out
# at any map size; lax's bfloat16 kernel gradient is widened to float32. 3x3 kernel gradients
# alone, bfloat16, Xeon with AMX (lax / GEMM, ms): 6 x 50x50, 128 -> 128: 88 / 45; 6 x 25x25,
# 256 -> 256: 82 / 18; 3 x 25x25, 512 -> 256: 44 / 20; but 6 x 100x100, 64 -> 64: 66 / 98.
BFLOAT16_GEMM_MIN_CHANNELS = 128

NHWC = ("NHWC", "HWIO", "NHWC")

_lax_only = False  # set while tracing inside `lax_gradients()`


@contextlib.contextmanager
def lax_gradients():
    """Programs traced inside take lax's conv gradients everywhere.

    For counting model FLOPs (the benchmarks): XLA's cost analysis counts the body of
    `kernel_gradient_gemm`'s loop over taps once, so the GEMM form would be undercounted;
    lax's input gradients are counted as the model's (the phase form skips no real work,
    but counting the one program keeps the figures comparable across versions).
    """
    global _lax_only
    previous, _lax_only = _lax_only, True
    try:
        yield
    finally:
        _lax_only = previous


def uses_gemm(x_shape: Sequence[int], kernel_shape: Sequence[int], out_shape: Sequence[int],
              dtype=jnp.float32) -> bool:
    """Whether the kernel gradient of a conv of these shapes runs as GEMMs (XLA:CPU only).

    x [N, H, W, C], kernel [kh, kw, C, K], out [N, Ho, Wo, K]; dtype: the conv's compute dtype
    (bfloat16: also every conv with `BFLOAT16_GEMM_MIN_CHANNELS` in and out).
    """
    if _lax_only or jax.default_backend() != "cpu":
        return False
    kh, kw, c, k = kernel_shape
    if jnp.dtype(dtype) == jnp.bfloat16 and min(c, k) >= BFLOAT16_GEMM_MIN_CHANNELS:
        return True
    return kh * kw == 1 or c * k * out_shape[1] * out_shape[2] >= GEMM_MIN_WORK


def uses_matmul(kernel_shape: Sequence[int], padding, dtype) -> bool:
    """Whether a conv runs as one matrix product (XLA:CPU, bfloat16, unpadded 1x1 kernels).

    XLA:CPU runs a bfloat16 dot on the CPU's bfloat16 matrix units (AMX, AVX512-BF16) but a
    bfloat16 conv as plain vector code: on a Xeon with AMX, 1x1 convs of ResNet's shapes ran
    at 100-180 GFLOP/s as convs and 650-1070 as dots (float32: ~200-270 either way, so
    float32 keeps the conv).
    """
    if _lax_only or jax.default_backend() != "cpu":
        return False
    return (tuple(kernel_shape[:2]) == (1, 1) and all(p == (0, 0) for p in padding)
            and jnp.dtype(dtype) == jnp.bfloat16)


def conv1x1_matmul(x: jax.Array, kernel: jax.Array, strides: Sequence[int]) -> jax.Array:
    """An unpadded 1x1 conv as a matrix product: x [N, H, W, C], kernel [1, 1, C, K] ->
    [N, ceil(H / s_h), ceil(W / s_w), K] (the strided pixels, then [N*Ho*Wo, C] @ [C, K]).
    Gradients: two more matrix products, the kernel's as `pixel_gram` (autodiff's own form of
    it ran as a float32 product on XLA:CPU, module docstring)."""
    return _conv1x1_matmul(x, kernel, tuple(int(s) for s in strides))


def _strided_pixels(x: jax.Array, strides: tuple[int, int]) -> jax.Array:
    return x[:, :: strides[0], :: strides[1]]  # [N, Ho, Wo, C]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv1x1_matmul(x, kernel, strides):
    return lax.dot_general(_strided_pixels(x, strides), kernel[0, 0], (((3,), (0,)), ((), ())))


def _conv1x1_matmul_fwd(x, kernel, strides):
    xs = _strided_pixels(x, strides)
    return lax.dot_general(xs, kernel[0, 0], (((3,), (0,)), ((), ()))), (xs, kernel, x.shape)


def _conv1x1_matmul_bwd(strides, residuals, g):
    xs, kernel, x_shape = residuals
    gxs = lax.dot_general(g, kernel[0, 0], (((3,), (1,)), ((), ())))  # [N, Ho, Wo, C]
    if strides == (1, 1):
        gx = gxs
    else:  # zeros at the pixels the strided conv skips
        (gx,) = jax.linear_transpose(lambda a: _strided_pixels(a, strides),
                                     jax.ShapeDtypeStruct(x_shape, gxs.dtype))(gxs)
    gk = pixel_gram(xs, g.astype(xs.dtype)).reshape(kernel.shape)
    return gx.astype(xs.dtype), gk.astype(kernel.dtype)


_conv1x1_matmul.defvjp(_conv1x1_matmul_fwd, _conv1x1_matmul_bwd)


def pixel_gram(a: jax.Array, b: jax.Array) -> jax.Array:
    """sum over every pixel of a^T b: a [N, H, W, C], b [N, H, W, K] -> [C, K] float32 (a kernel
    gradient's GEMM).

    In bfloat16 as a contraction over (image, pixel) of [N, H*W, C] and [N, H*W, K]: XLA:CPU
    widened the flat [N*H*W, C]^T [N*H*W, K] product to float32 and ran it off the matrix units
    (on a Xeon with AMX, 6 x 100x100, 64 -> 256: 53 against 10 ms; 6 x 50x50, 128 -> 512: 33
    against 5; 6 x 25x25, 1024 -> 256: 14 against 5). float32 keeps the flat product (as fast
    or faster there).
    """
    dtype = jnp.result_type(a, b)
    a, b = a.astype(dtype), b.astype(dtype)
    n, h, w, c = a.shape
    k = b.shape[-1]
    if dtype == jnp.bfloat16:
        return lax.dot_general(a.reshape(n, h * w, c), b.reshape(n, h * w, k), (((0, 1), (0, 1)), ((), ())),
                               preferred_element_type=jnp.float32)
    return lax.dot_general(a.reshape(n * h * w, c), b.reshape(n * h * w, k), (((0,), (0,)), ((), ())),
                           preferred_element_type=jnp.float32)


def uses_phases(kernel_shape: Sequence[int], strides: Sequence[int]) -> bool:
    """Whether a conv's input gradient runs as `input_gradient_phases` (XLA:CPU only): strided
    convs wider than 1x1 (a strided 1x1's input gradient is one small conv under lax too)."""
    if _lax_only or jax.default_backend() != "cpu":
        return False
    return max(strides) > 1 and kernel_shape[0] * kernel_shape[1] > 1


def _phase_geometry(p: int, size: int, k: int, s: int, pad_lo: int, out_size: int) -> tuple[int, int, int, int]:
    """One dimension of phase p (module docstring): (first tap r, taps m, pad before, pad after)
    of the stride-1 correlation of dY giving dx[p], dx[s + p], ... for all ceil(size / s) rows
    (rows past `size` are cropped afterwards). Negative pads crop dY."""
    r = (p + pad_lo) % s
    taps = -(-(k - r) // s) if r < k else 0  # ceil((k - r) / s): taps r, r + s, ... < k
    q = (p + pad_lo - r) // s
    rows = -(-size // s)
    before = taps - 1 - q
    return r, taps, before, rows - out_size - before + taps - 1


def input_gradient_phases(
    g: jax.Array, kernel: jax.Array, x_hw: tuple[int, int], strides: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
) -> jax.Array:
    """dL/dx of y = conv(x, kernel) given g = dL/dy, as strides[0] * strides[1] stride-1 convs.

    g [N, Ho, Wo, K], kernel [kh, kw, C, K], x_hw = (H, W), padding as lax's -> [N, H, W, C]
    in g's dtype.
    """
    n, ho, wo, _ = g.shape
    kh, kw, c, _ = kernel.shape
    (sh, sw), (h, w) = strides, x_hw
    zero = jnp.zeros((), g.dtype)
    rows = []
    for p in range(sh):
        rh, th, top, bottom = _phase_geometry(p, h, kh, sh, padding[0][0], ho)
        cols = []
        for q in range(sw):
            rw, tw, left, right = _phase_geometry(q, w, kw, sw, padding[1][0], wo)
            if th == 0 or tw == 0:  # no tap reaches these rows / columns (kernel smaller than the stride)
                cols.append(jnp.zeros((n, -(-h // sh), -(-w // sw), c), g.dtype))
                continue
            # Taps r, r + s, ... of each dimension, flipped: [th, tw, K, C] (the conv maps K -> C).
            sub = jnp.swapaxes(kernel[rh::sh, rw::sw][::-1, ::-1], 2, 3).astype(g.dtype)
            gp = lax.pad(g, zero, ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))
            cols.append(_conv(gp, sub, (1, 1), ((0, 0), (0, 0))))  # [N, ceil(H / sh), ceil(W / sw), C]
        rows.append(jnp.stack(cols, axis=3))  # [N, H', W', sw, C]
    dx = jnp.stack(rows, axis=2)  # [N, H', sh, W', sw, C]: row a, phase p is input row sh * a + p
    dx = dx.reshape(n, dx.shape[1] * sh, dx.shape[3] * sw, c)
    return dx[:, :h, :w]


def kernel_gradient_gemm(
    x: jax.Array, g: jax.Array, kernel_hw: tuple[int, int], strides: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
) -> jax.Array:
    """dL/dkernel of y = conv(x, kernel) given g = dL/dy, as kh * kw GEMMs (module docstring);
    in bfloat16 as kh GEMMs, one per kernel row.

    x [N, H, W, C], g [N, Ho, Wo, K], padding ((top, bottom), (left, right)) as lax's
    (negative values crop) -> [kh, kw, C, K] float32.
    """
    kh, kw = kernel_hw
    sh, sw = strides
    n, ho, wo, k = g.shape
    c = x.shape[-1]
    zero = jnp.zeros((), x.dtype)
    xp = lax.pad(x, zero, ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))  # [N, H', W', C]
    span = (n, sh * (ho - 1) + 1, sw * (wo - 1) + 1, c)  # the input a tap's outputs read, before striding

    def tap(window):  # the [N, span..., C] input a tap reads -> its [C, K]
        window = lax.slice(window, (0, 0, 0, 0), span, (1, sh, sw, 1))  # [N, Ho, Wo, C]
        return pixel_gram(window, g)

    if kh * kw == 1:
        return tap(lax.slice(xp, (0, 0, 0, 0), span)).reshape(1, 1, c, k)
    if jnp.result_type(x, g) == jnp.bfloat16 and kw > 1:
        # One GEMM per kernel row: the row's kw windows side by side, [N, Ho, Wo, kw*C]^T dY,
        # a loop over the rows (one slab live at a time). A wider product than a tap's: the
        # decoder's 3x3 256 -> 256 over 3 x 100x100, bfloat16, alone: 276 ms per tap, 160 per row.
        def row(carry, i):
            slab = lax.dynamic_slice(xp, (0, i, 0, 0), (n, span[1], xp.shape[2], c))  # [N, span_h, W', C]
            windows = [lax.slice(slab, (0, 0, j, 0), (n, span[1], j + span[2], c), (1, sh, sw, 1))
                       for j in range(kw)]  # kw x [N, Ho, Wo, C]
            return carry, pixel_gram(jnp.concatenate(windows, axis=-1), g).reshape(kw, c, k)

        _, rows = lax.scan(row, None, jnp.arange(kh))
        return rows  # [kh, kw, C, K]
    # A loop, one tap t = i * kw + j at a time: a single window is live (unrolled, XLA kept the
    # windows of many convs alive at once: the full training step's memory 10.8 -> 16.6 GB).
    _, taps = lax.scan(lambda carry, t: (carry, tap(lax.dynamic_slice(xp, (0, t // kw, t % kw, 0), span))),
                       None, jnp.arange(kh * kw))
    return taps.reshape(kh, kw, c, k)


def kernel_gradient(
    x: jax.Array, g: jax.Array, kernel: jax.Array, strides: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
) -> jax.Array:
    """dL/dkernel of conv(x, kernel) (NHWC / HWIO, no dilation) in kernel's dtype: the GEMM
    form where `uses_gemm` says so, lax's transpose of the conv otherwise."""
    return _kernel_gradient(x, g, kernel, strides, padding,
                            uses_gemm(x.shape, kernel.shape, g.shape, jnp.result_type(x, g)))


def _kernel_gradient(x, g, kernel, strides, padding, gemm: bool) -> jax.Array:
    if gemm:
        return kernel_gradient_gemm(x, g, kernel.shape[:2], strides, padding).astype(kernel.dtype)
    (gk,) = jax.linear_transpose(lambda k_: _conv(x, k_, strides, padding), kernel)(g.astype(kernel.dtype))
    return gk


def _conv(x, kernel, strides, padding):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv_cpu_gradients(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                       padding: tuple[tuple[int, int], tuple[int, int]], gemm_kernel: bool, phase_input: bool
                       ) -> jax.Array:
    """lax's NHWC / HWIO conv, x [N, H, W, C] -> [N, Ho, Wo, K], whose kernel gradient is
    `kernel_gradient_gemm` if `gemm_kernel` and whose input gradient is `input_gradient_phases`
    if `phase_input` (else lax's)."""
    return _conv(x, kernel, strides, padding)


def _fwd(x, kernel, strides, padding, gemm_kernel, phase_input):
    return _conv(x, kernel, strides, padding), (x, kernel)


def _bwd(strides, padding, gemm_kernel, phase_input, residuals, g):
    x, kernel = residuals
    if phase_input:
        gx = input_gradient_phases(g, kernel, x.shape[1:3], strides, padding).astype(x.dtype)
    else:
        (gx,) = jax.linear_transpose(lambda x_: _conv(x_, kernel, strides, padding), x)(g.astype(x.dtype))
    return gx, _kernel_gradient(x, g, kernel, strides, padding, gemm_kernel)


conv_cpu_gradients.defvjp(_fwd, _bwd)


def _plain_nhwc(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                batch_group_count, precision, preferred_element_type) -> bool:
    """A 2-D conv this module handles: NHWC / HWIO, no dilation or groups."""
    if lhs.ndim != 4 or rhs.ndim != 4:
        return False
    if any(d not in (None, 1, (1, 1), [1, 1]) for d in (lhs_dilation, rhs_dilation)):
        return False
    if feature_group_count != 1 or batch_group_count != 1 or precision is not None or preferred_element_type is not None:
        return False
    try:
        given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    except (TypeError, ValueError):
        return False
    return given == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
    """`lax.conv_general_dilated` whose kernel gradient runs as GEMMs (`uses_gemm`) and whose
    input gradient runs by phases (`uses_phases`) where that is faster, and which runs bfloat16
    1x1 convs as matrix products (`uses_matmul`); any call this module
    does not handle (dilation, groups, other layouts, circular padding) is lax's own.
    'SAME' / 'VALID' padding is resolved as lax resolves it."""
    if _plain_nhwc(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                   batch_group_count, precision, preferred_element_type):
        strides = tuple(int(s) for s in window_strides)
        if isinstance(padding, str):  # 'SAME' / 'VALID' (flax's default is 'SAME')
            padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
        if uses_matmul(rhs.shape, pads, jnp.result_type(lhs, rhs)):
            return conv1x1_matmul(lhs, rhs, strides)
        out_hw = [(lhs.shape[1 + a] + sum(pads[a]) - rhs.shape[a]) // strides[a] + 1 for a in (0, 1)]
        gemm_kernel = uses_gemm(lhs.shape, rhs.shape, (lhs.shape[0], *out_hw, rhs.shape[3]),
                                jnp.result_type(lhs, rhs))
        phase_input = uses_phases(rhs.shape, strides)
        if gemm_kernel or phase_input:
            return conv_cpu_gradients(lhs, rhs, strides, pads, gemm_kernel, phase_input)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                                    feature_group_count, batch_group_count, precision, preferred_element_type)
