"""Quantizer properties: level counts, log grid, below-grid rule, STE gradients, idempotence, numpy == torch."""
import numpy as np
import pytest
import torch

from bayesim.bnn import quant as Q
from bayesim.errors import BayesimError


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_uniform_levels_count_and_grid(bits):
    x = np.linspace(-3, 3, 20001, dtype=np.float32)
    step = np.float32(0.37)
    q = Q.quantize_uniform(x, step, bits)
    levels = np.unique(q)
    if bits == 1:
        assert levels.tolist() == [-step, step]
    else:
        k = 2 ** (bits - 1) - 1
        assert len(levels) == min(2 * k + 1, len(levels))  # all symmetric levels reached for this range
        expect = (np.arange(-k, k + 1) * step).astype(np.float32)
        if 3 >= k * step:  # range covers the whole grid
            np.testing.assert_array_equal(levels, expect)
        assert np.abs(q).max() <= k * step + 1e-7
        inside = np.abs(x) <= k * step
        assert np.abs(q[inside] - x[inside]).max() <= step / 2 + 1e-6  # nearest level inside the range


def test_uniform_rounding_values_by_hand():
    q = Q.quantize_uniform(np.array([0.24, 0.26, -0.76, 5.0, -5.0], np.float32), 0.5, 3)  # K = 3
    np.testing.assert_array_equal(q, np.array([0.0, 0.5, -1.0, 1.5, -1.5], np.float32))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_idempotence(bits):
    rng = np.random.default_rng(1)
    x = rng.normal(size=5000).astype(np.float32)
    step = Q.uniform_step(x, bits)
    q = Q.quantize_uniform(x, step, bits)
    np.testing.assert_array_equal(Q.quantize_uniform(q, step, bits), q)
    s = np.abs(x) + 1e-3
    ql = Q.quantize_log(s, s.max(), bits)
    np.testing.assert_array_equal(Q.quantize_log(ql, s.max(), bits), ql)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_log_grid_levels_and_below_rule(bits):
    smax = np.float32(0.8)
    table = Q.log_levels(smax, bits)
    n = 2 ** bits - 1
    assert len(table) == 2 ** bits  # 2^b - 1 powers of two + the zero code
    np.testing.assert_array_equal(table[:n], (0.8 * 2.0 ** -np.arange(n)).astype(np.float32))
    assert table[-1] == 0
    s = np.geomspace(1e-6, 2.0, 40001).astype(np.float32)
    q = Q.quantize_log(s, smax, bits)
    assert set(np.unique(q)) <= set(table.tolist())
    assert len(np.unique(q)) == 2 ** bits  # every code used
    assert q[s >= smax].max() == smax and (q[s >= smax] == smax).all()  # clipped at the anchor
    nz = q > 0
    ratio = np.log2(s[nz] / q[nz])
    assert np.abs(ratio[s[nz] <= smax]).max() <= 0.5 + 1e-6  # nearest level in the log domain
    smallest = table[n - 1]
    below = s < smallest * np.float32(2 ** -0.5) * 0.999
    assert (q[below] == 0).all()  # below the grid by more than half an octave -> 0 explicitly
    just_above = (s > smallest * 0.75) & (s < smallest)
    assert (q[just_above] == smallest).all()


def test_log_quantizer_hand_values():
    q = Q.quantize_log(np.array([1.0, 0.6, 0.3, 0.26, 0.2, 0.1, 0.0], np.float32), 1.0, 2)  # levels 1, .5, .25, 0
    np.testing.assert_array_equal(q, np.array([1.0, 0.5, 0.25, 0.25, 0.25, 0.0, 0.0], np.float32))


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_numpy_and_torch_identical(bits):
    rng = np.random.default_rng(bits)
    x = (rng.normal(size=20000) * 2).astype(np.float32)
    step = Q.uniform_step(x, bits)
    np.testing.assert_array_equal(Q.quantize_uniform(x, step, bits),
                                  Q.quantize_uniform_t(torch.from_numpy(x), float(step), bits).numpy())
    s = np.exp(rng.uniform(-12, 0.5, size=20000)).astype(np.float32)
    np.testing.assert_array_equal(Q.quantize_log(s, s.max(), bits),
                                  Q.quantize_log_t(torch.from_numpy(s), float(s.max()), bits).numpy())
    a = (rng.normal(size=20000) * 3).astype(np.float32)
    np.testing.assert_array_equal(Q.quantize_activation(a, 2.5, bits),
                                  Q.quantize_activation_t(torch.from_numpy(a), 2.5, bits).numpy())
    # the STE versions compute the same forward values
    np.testing.assert_array_equal(Q.uniform_ste(torch.from_numpy(x), torch.tensor(float(step)), bits).detach().numpy(),
                                  Q.quantize_uniform(x, step, bits))


def test_activation_levels():
    a = np.linspace(-1, 3, 10001, dtype=np.float32)
    q = Q.quantize_activation(a, 2.0, 2)
    np.testing.assert_allclose(np.unique(q), [0, 2 / 3, 4 / 3, 2], rtol=1e-6)
    np.testing.assert_array_equal(Q.quantize_activation(a, 2.0, None), np.clip(a, 0, 2))


def test_ste_gradients():
    x = torch.tensor([-5.0, -0.3, 0.2, 0.45, 5.0], requires_grad=True)
    step = torch.tensor(0.5, requires_grad=True)
    y = Q.uniform_ste(x, step, 2)  # K = 1: levels -0.5, 0, 0.5
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 1, 1, 1, 0])  # identity inside the range, 0 when clipped
    # LSQ gradient to the step: round(v) - v inside, +-K when clipped
    v = np.clip(np.array([-5.0, -0.3, 0.2, 0.45, 5.0]) / 0.5, -1, 1)
    expect = np.where(np.abs(v) >= 1, np.sign(v), np.round(v) - v).sum()
    assert step.grad.item() == pytest.approx(expect, abs=1e-6)
    s = torch.tensor([0.3, 0.01, 1e-6], requires_grad=True)
    Q.log_ste(s, torch.tensor(1.0), 3).sum().backward()
    np.testing.assert_array_equal(s.grad.numpy(), [1, 1, 1])
    a = torch.tensor([-1.0, 0.5, 3.0], requires_grad=True)
    up = torch.tensor(2.0, requires_grad=True)
    Q.activation_ste(a, up, 4).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [0, 1, 0])
    assert up.grad.item() > 0  # PACT: the clipped value pulls the upper bound


@pytest.mark.parametrize("bad", [0, 17, -1, 2.5, True, "4"])
def test_bits_validation(bad):
    with pytest.raises(BayesimError, match="1..16"):
        Q.check_bits(bad, "--bits")


def test_uniform_sigma_quantizer_ablation_levels_idempotence_and_torch_parity():
    import torch

    from bayesim.bnn import quant as Q

    s = np.abs(np.random.default_rng(3).normal(0, 0.02, 5000)).astype(np.float32)
    for bits in (2, 3, 4):
        q = Q.quantize_sigma(s, s.max(), bits, "uniform")
        step = np.float32(s.max() / np.float32(2 ** bits - 1))
        assert np.unique(q).size <= 2 ** bits and q.min() >= 0 and q.max() <= s.max() * (1 + 1e-6)
        np.testing.assert_allclose(q / step, np.rint(q / step), atol=1e-4)  # on the grid j * step
        np.testing.assert_array_equal(Q.quantize_sigma(q, s.max(), bits, "uniform"), q)  # idempotent
        np.testing.assert_array_equal(Q.quantize_sigma_t(torch.from_numpy(s), float(s.max()), bits, "uniform").numpy(), q)
    # log and uniform differ for small sigmas: uniform collapses them to 0, log keeps octaves
    small = np.float32([s.max() / 64])
    assert Q.quantize_sigma(small, s.max(), 3, "uniform")[0] == 0
    assert Q.quantize_sigma(small, s.max(), 3, "log")[0] == pytest.approx(s.max() / 64)
