"""DAC and ADC on hand-computed cases."""
import numpy as np

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
                             np.full((1, 4), 2.0, np.float32), 3, 0.0, np.uint64(0), rng.NORMAL_TABLE, sat)
    np.testing.assert_allclose(y[0], np.array([2.0, 4 / 3, -2 / 3 * 0.5, -2.0]) * 2.0, rtol=1e-6)
    assert sat[0] == 2


def test_adc_accumulates_row_tiles_digitally():
    u = np.array([[[0.3, -0.2]], [[0.5, 0.4]]], np.float32)  # two row tiles
    y = np.full((1, 2), 1.0, np.float32)
    sat = np.zeros(1, np.int64)
    # ideal ADC (qmax 0): y += (0.3*2 + 0.5*3, -0.2*2 + 0.4*3) * x_scale 0.5
    periphery.adc_accumulate(u, y, np.array([0.5], np.float32), np.array([[2, 2], [3, 3]], np.float32),
                             np.ones((2, 2), np.float32), 0, 0.0, np.uint64(0), rng.NORMAL_TABLE, sat)
    np.testing.assert_allclose(y[0], [1 + 1.05, 1 + 0.4], rtol=1e-6)
    assert sat[0] == 0
