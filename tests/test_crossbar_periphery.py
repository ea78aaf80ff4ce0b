"""DAC and ADC on hand-computed cases."""
import numpy as np
import pytest

from bayesim import rng
from bayesim.crossbar import periphery


def test_dac_signed_hand_case():
    x = np.array([[0.5, -0.25, 1.0, 0.1], [0.0, 0.0, 0.0, 0.0]], np.float32)
    xn, scale, clipped = periphery.dac(x, 3, True, "abs_max", 1.0)  # q = 3: codes rint([1.5, -.75, 3, .3])
    np.testing.assert_array_equal(scale, [1.0, 1.0])
    np.testing.assert_allclose(xn[0], [2 / 3, -1 / 3, 1.0, 0.0], rtol=1e-7)
    np.testing.assert_array_equal(xn[1], 0)
    assert clipped == 0


def test_dac_unsigned_fixed_range_clips_and_counts():
    x = np.array([[2.0, 1.0, -0.4, 0.6, 3.0]], np.float32)
    xn, scale, clipped = periphery.dac(x, 2, False, "fixed", 2.0)  # q = 3; x/2*3 = [3, 1.5, -.6, .9, 4.5]
    np.testing.assert_allclose(xn[0], [1.0, 2 / 3, 0.0, 1 / 3, 1.0], rtol=1e-7)  # 1.5 -> 2 (half to even)
    assert scale[0] == 2.0 and clipped == 2


def test_dac_abs_max_scale_per_vector():
    x = np.array([[4.0, -2.0], [0.5, 0.25]], np.float32)
    xn, scale, _ = periphery.dac(x, None, True, "abs_max", 1.0)
    np.testing.assert_array_equal(scale, [4.0, 0.5])
    np.testing.assert_array_equal(xn, [[1.0, -0.5], [1.0, 0.5]])


def test_adc_hand_case_with_saturation():
    u = np.array([[[2.5, 1.0, -0.4, -3.0]]], np.float32)  # [row tiles, N, out]
    y = np.zeros((1, 4), np.float32)
    sat = np.zeros(1, np.int64)
    # range 2, 3 bits (q = 3): rint([3.75, 1.5, -0.6, -4.5]) -> [4 -> 3, 2, -1, -4 -> -3] -> t * 2/3
    periphery.adc_accumulate(u, y, np.array([2.0], np.float32), np.array([[1, 1, 0.5, 1]], np.float32),
                             np.full((1, 4), 2.0, np.float32), 3, 0.0, np.uint64(0), 0, rng.NORMAL_TABLE, sat)
    np.testing.assert_allclose(y[0], np.array([2.0, 4 / 3, -2 / 3 * 0.5, -2.0]) * 2.0, rtol=1e-6)
    assert sat[0] == 2


def test_adc_accumulates_row_tiles_digitally():
    u = np.array([[[0.3, -0.2]], [[0.5, 0.4]]], np.float32)  # two row tiles
    y = np.full((1, 2), 1.0, np.float32)
    sat = np.zeros(1, np.int64)
    # ideal ADC (qmax 0): y += (0.3*2 + 0.5*3, -0.2*2 + 0.4*3) * x_scale 0.5
    periphery.adc_accumulate(u, y, np.array([0.5], np.float32), np.array([[2, 2], [3, 3]], np.float32),
                             np.ones((2, 2), np.float32), 0, 0.0, np.uint64(0), 0, rng.NORMAL_TABLE, sat)
    np.testing.assert_allclose(y[0], [1 + 1.05, 1 + 0.4], rtol=1e-6)
    assert sat[0] == 0


def test_fused_im2col_dac_equals_numpy_im2col_then_dac():
    """The fused parallel kernel gives the numpy reference's values bit for bit (zero padding, stride, all
    DAC modes, an all-zero image whose scale falls back to 1)."""
    import pytest

    from bayesim.crossbar.layer import im2col

    r = np.random.default_rng(0)
    for shape, k, stride, pad in [((5, 1, 12, 12), 5, 1, 2), ((3, 4, 9, 9), 3, 2, 1), ((2, 2, 6, 7), 2, 1, 0)]:
        x = r.normal(0, 1, shape).astype(np.float32)
        x[0] = 0
        cols, _, _ = im2col(x, k, k, stride, pad)
        for bits, signed, scaling in [(8, False, "abs_max"), (4, True, "abs_max"), (3, False, "fixed"),
                                      (None, True, "fixed"), (None, False, "abs_max")]:
            ref = periphery.dac_numpy(cols, bits, signed, scaling, 1.5)
            got = periphery.im2col_dac(x, k, k, stride, pad, bits, signed, scaling, 1.5)
            np.testing.assert_array_equal(got[0], ref[0])
            np.testing.assert_array_equal(got[1], ref[1])
            assert got[2] == ref[2]
            dense = periphery.dac(cols, bits, signed, scaling, 1.5)  # dense inputs take the same kernel
            np.testing.assert_array_equal(dense[0], ref[0])
            assert dense[2] == ref[2]
    with pytest.raises(AssertionError):  # the comparison can fail: another scale changes the codes
        np.testing.assert_array_equal(periphery.im2col_dac(x, 2, 2, 1, 0, 8, False, "fixed", 1.0)[0],
                                      periphery.dac_numpy(cols, 8, False, "fixed", 1.5)[0])


def _tiled_case(seed, n, k, out, starts):
    """DAC'd inputs xn [n, k], weights w [out, k] in block layout over the row tiles `starts`, input and
    weight scales, and the per-tile products u [tiles, n, out] computed by numpy."""
    r = np.random.default_rng(seed)
    xn = r.uniform(0, 1, (n, k)).astype(np.float32)
    w = r.normal(0, 0.3, (out, k)).astype(np.float32)
    starts = np.array(starts, np.int64)
    blocks = np.concatenate([w[:, a:b].ravel() for a, b in zip(starts[:-1], starts[1:])])
    xs = r.uniform(0.5, 2, n).astype(np.float32)
    ws = r.uniform(0.5, 2, (starts.size - 1, out)).astype(np.float32)
    u = np.stack([xn[:, a:b] @ w[:, a:b].T for a, b in zip(starts[:-1], starts[1:])])
    return xn, starts, blocks, xs, ws, u


@pytest.mark.parametrize("n, out", [(50, 5), (300, 12)])  # one block / three (the last one partial)
def test_fused_mvm_adc_matches_blas_then_adc(n, out):
    """Products + ADC + accumulation in one kernel = BLAS products then adc_accumulate (up to float32
    summation order, which can move a value across an ADC step only at a tie; none here)."""
    from bayesim.crossbar import kernels

    assert n <= periphery.MVM_ROWS or periphery.MVM_ROWS * 2 < n < periphery.MVM_ROWS * 3
    xn, starts, blocks, xs, ws, u = _tiled_case(1, n, 70, out, [0, 32, 64, 70])
    rg = (np.abs(u).max(axis=1) * 0.8).astype(np.float32)  # some saturate
    y_ref = np.zeros((n, out), np.float32)
    sat_ref = np.zeros(n, np.int64)
    periphery.adc_accumulate(u, y_ref, xs, ws, rg, 7, 0.0, np.uint64(0), 0, rng.NORMAL_TABLE, sat_ref)
    y = np.empty((n, out, 1), np.float32)
    sat = np.zeros(n, np.int64)
    with kernels.blas_single_thread():
        periphery.mvm_adc(xn, blocks, starts, y, 1, xs, ws, rg, 7, 0.0, np.uint64(0), 0, rng.NORMAL_TABLE, sat,
                          False, y)
    np.testing.assert_allclose(y[:, :, 0], y_ref, rtol=1e-5, atol=1e-6)
    assert sat.sum() == sat_ref.sum() > 0


def test_gemm_adc_products_and_conversion():
    """gemm_adc: raw products = per-tile matmul (float32 rounding); the converting pass = adc_accumulate of
    those very products, bit for bit (noise and saturation counts included), whatever the thread count."""
    import numba

    from bayesim.crossbar import kernels

    n, out = 40, 150  # 3 column tasks (64, 64, 22), row tiles 128 + 128 + 44
    xn, starts, blocks, xs, ws, u_np = _tiled_case(2, n, 300, out, [0, 128, 256, 300])
    u = np.full((3, n, out), np.nan, np.float32)
    tasks = -(-out // periphery.GEMM_COLUMNS)
    with kernels.blas_single_thread():
        periphery.gemm_adc(xn, blocks, starts, xs, ws, ws, 0, 0.0, np.uint64(0), 0, rng.NORMAL_TABLE,
                           np.zeros((tasks, n), np.int64), True, u, u[0])
    np.testing.assert_allclose(u, u_np, rtol=1e-5, atol=1e-5)
    rg = (np.abs(u).max(axis=1) * 0.8).astype(np.float32)  # some saturate
    y_ref = np.zeros((n, out), np.float32)
    sat_ref = np.zeros(n, np.int64)
    periphery.adc_accumulate(u, y_ref, xs, ws, rg, 7, 0.05, np.uint64(9), 0, rng.NORMAL_TABLE, sat_ref)
    before = numba.get_num_threads()
    results = []
    try:
        for threads in (1, before):
            numba.set_num_threads(threads)
            y = np.zeros((n, out), np.float32)
            sat = np.zeros((tasks, n), np.int64)
            with kernels.blas_single_thread():
                periphery.gemm_adc(xn, blocks, starts, xs, ws, rg, 7, 0.05, np.uint64(9), 0, rng.NORMAL_TABLE, sat,
                                   False, np.empty((1, 1, 1), np.float32), y)
            results.append((y, sat.sum(axis=0)))
    finally:
        numba.set_num_threads(before)
    for y, sat in results:
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(sat, sat_ref)
    assert sat_ref.sum() > 0


def test_gemm_adc_refuses_strided_operands():
    import pytest

    xn, starts, blocks, xs, ws, u = _tiled_case(3, 8, 40, 6, [0, 40])
    y = np.zeros((8, 6), np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        periphery.gemm_adc(np.asfortranarray(xn), blocks, starts, xs, ws, ws, 0, 0.0, np.uint64(0), 0,
                           rng.NORMAL_TABLE, np.zeros((1, 8), np.int64), False, np.empty((1, 1, 1), np.float32), y)


def test_output_noise_is_a_function_of_the_row_not_of_the_batch():
    """Output noise of row i is drawn at ((row0 + i)*tiles + r)*out + j: converting rows 0..n in one call equals
    converting them in two batches with row0 = 0 and row0 = k (bit for bit but for BLAS's rounding); two
    batches of the same inputs at different row0 get different noise (a batch does not reuse the noise
    of the batch before it), with the spread the noise std gives."""
    from bayesim.crossbar import kernels

    n, out, k = 40, 150, 17
    xn, starts, blocks, xs, ws, u = _tiled_case(4, n, 300, out, [0, 128, 256, 300])
    sd, key = 0.05, np.uint64(11)

    def acc(a, b, row0):
        y = np.zeros((b - a, out), np.float32)
        periphery.adc_accumulate(np.ascontiguousarray(u[:, a:b]), y, xs[a:b], ws, ws, 0, sd, key, row0,
                                 rng.NORMAL_TABLE, np.zeros(b - a, np.int64))
        return y

    def gemm(a, b, row0):
        y = np.zeros((b - a, out), np.float32)
        with kernels.blas_single_thread():
            periphery.gemm_adc(np.ascontiguousarray(xn[a:b]), blocks, starts, xs[a:b], ws, ws, 0, sd, key, row0,
                               rng.NORMAL_TABLE, np.zeros((3, b - a), np.int64), False,
                               np.empty((1, 1, 1), np.float32), y)
        return y

    def fused(a, b, row0):
        y = np.empty((b - a, out, 1), np.float32)
        with kernels.blas_single_thread():
            periphery.mvm_adc(np.ascontiguousarray(xn[a:b]), blocks, starts, y, 1, xs[a:b], ws, ws, 0, sd, key,
                              row0, rng.NORMAL_TABLE, np.zeros(b - a, np.int64), False, y)
        return y[:, :, 0]

    whole = [f(0, n, 0) for f in (acc, gemm, fused)]
    for y in whole[1:]:  # the same noise stream on every path (products summed in other orders than numpy's)
        np.testing.assert_allclose(y, whole[0], rtol=1e-5, atol=1e-4)
    for f, ref in zip((acc, gemm, fused), whole):
        batched = np.concatenate([f(0, k, 0), f(k, n, k)])
        if f is not acc:  # BLAS may round a product differently with another number of rows; the noise is the same
            np.testing.assert_allclose(batched, ref, rtol=1e-5, atol=1e-4)
        else:
            np.testing.assert_array_equal(batched, ref)
        # the first k rows again, as if they were a later batch: fresh noise, of std sd per tile (3 tiles)
        d = (f(0, k, n) - ref[:k]) / (xs[:k, None] * np.sqrt(np.square(ws).sum(axis=0))[None, :])
        assert abs(d.std() / (np.sqrt(2) * sd) - 1) < 0.05  # k*out = 2550 differences
