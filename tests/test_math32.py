"""The inlined float32 log/exp of the kernels, and the row-wise read law built on them."""
import numba as nb
import numpy as np
import pytest

from bayesim._math32 import exp32, log32
from bayesim.devices.kernels import (DRIFT_NONE, DRIFT_PCM, DRIFT_POWER, READ_NONE, READ_PCM, READ_POLY,
                                     read_cell, read_cell32, read_cells32)


def _elementwise(f):
    @nb.njit
    def apply(x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = f(x[i])
        return out
    return apply


_logs, _exps = _elementwise(log32), _elementwise(exp32)


def test_log32_is_within_two_ulp_of_float64_log():
    r = np.random.default_rng(0)
    x = np.exp(r.uniform(np.log(1e-30), np.log(1e30), 200_000)).astype(np.float32)
    edges = np.float32([1.0, 2.0, 0.5, 0.70710677, 0.70710683, 1.4142135, 1e-7, 3.4e38, 1.2e-38])
    x = np.concatenate([x, edges, np.nextafter(edges, np.float32(0)), np.nextafter(edges, np.finfo(np.float32).max)])
    ref = np.log(x.astype(np.float64))
    err = np.abs(_logs(x).astype(np.float64) - ref)
    # two float32 ulp of the result, or of ln 2 times the exponent's rounding near x = 1
    assert np.all(err <= 2.5 * np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64) + 1e-9)
    assert _logs(np.float32([1.0]))[0] == 0.0


def test_exp32_is_within_two_ulp_of_float64_exp_and_clamps():
    r = np.random.default_rng(1)
    x = np.concatenate([r.uniform(-87, 88, 200_000), r.uniform(-1e-3, 1e-3, 10_000), [0.0, -87.0, 88.0]])
    x = x.astype(np.float32)
    ref = np.exp(x.astype(np.float64))
    got = _exps(x).astype(np.float64)
    assert np.all(np.abs(got - ref) <= 2.5 * np.spacing(ref.astype(np.float32)).astype(np.float64))
    assert _exps(np.float32([0.0]))[0] == 1.0
    big = _exps(np.float32([-1000.0, 1000.0]))
    assert big[0] == np.float32(np.exp(-87.0)) or abs(big[0] / np.exp(-87.0) - 1) < 1e-6
    assert np.isfinite(big[1]) and abs(big[1] / np.exp(88.0) - 1) < 1e-6


@nb.njit
def _per_cell(g, z_nu, z, law, coeffs, lo, hi):
    out = np.empty_like(g)
    for i in range(g.size):
        out[i] = read_cell32(g[i], z_nu[i], z[i], law[0], law[1], np.int64(law[2]), law[3], law[4], np.int64(law[5]),
                             coeffs, law[6], law[7], law[8], law[9], lo, hi)
    return out


@nb.njit
def _row(g, z_nu, z, law, coeffs, lo, hi):
    out = g.copy()
    read_cells32(out, z_nu, z, out.size, law[0], law[1], np.int64(law[2]), law[3], law[4], np.int64(law[5]), coeffs,
                 law[6], law[7], law[8], law[9], lo, hi)
    return out


@pytest.mark.parametrize("drift,read", [(DRIFT_PCM, READ_PCM), (DRIFT_POWER, READ_NONE), (DRIFT_NONE, READ_POLY),
                                        (DRIFT_POWER, READ_POLY), (DRIFT_NONE, READ_NONE)])
def test_row_read_law_equals_the_per_cell_law_and_the_float64_reference(drift, read):
    """read_cells32 (the SIMD row loop of the fused kernel) gives read_cell32's values, and both follow the
    float64 read_cell to float32 rounding; zero cells stay zero and reads are clipped."""
    r = np.random.default_rng(2)
    n = 4096
    g = r.uniform(0.0, 30.0, n).astype(np.float32)
    g[:7] = 0.0
    z_nu = r.standard_normal(n).astype(np.float32)
    z = r.standard_normal(n).astype(np.float32)
    # log_ratio (drift to 1 s from t0 = 20 s ... a large value), noise_t, kind, nu_mean, nu_std, kind,
    # q_coeff, q_exp, q_max, 1/g_max
    law = np.float32([np.log(1 + 1e4 / 20.0), 4.19, drift, 0.06, 0.02, read, 0.0088, 0.65, 0.2, 1 / 25.0])
    coeffs = np.array([0.05, 0.3, -0.1])
    lo, hi = np.float32(0.0), np.float32(25.0)
    row, cell = _row(g, z_nu, z, law, coeffs, lo, hi), _per_cell(g, z_nu, z, law, coeffs, lo, hi)
    np.testing.assert_allclose(row, cell, rtol=2e-6, atol=1e-6)
    ref = np.array([read_cell(float(g[i]), float(z_nu[i]), float(z[i]), float(law[0]), float(law[1]), drift,
                              float(law[3]), float(law[4]), read, coeffs, float(law[6]), float(law[7]),
                              float(law[8]), float(law[9]), 0.0, 25.0) for i in range(n)])
    np.testing.assert_allclose(row, ref, rtol=2e-5, atol=2e-5)
    if read != READ_POLY:  # a zero conductance neither drifts nor has 1/f noise
        assert np.all(row[:7] == 0.0)
    assert row.min() >= 0.0 and row.max() <= 25.0
    if drift != DRIFT_NONE or read != READ_NONE:
        assert not np.allclose(row[7:], g[7:])  # the law did act
