"""IR drop: exact nodal solver against hand analysis, first-order model against the exact solver."""
import numpy as np
import pytest

from bayesim.crossbar import irdrop


def test_exact_single_cell_is_series_circuit():
    # driver segment r, cell G, ground segment r in series: I/V = 1 / (1/G + 2r)
    g, r = 20.0, 500.0
    m = irdrop.exact(np.array([[g]]), r)
    assert m.shape == (1, 1)
    assert m[0, 0] == pytest.approx(1e6 / (1 / (g * 1e-6) + 2 * r), rel=1e-6)


def test_exact_without_wire_resistance_is_ideal():
    g = np.random.default_rng(0).uniform(1, 25, (4, 5)).astype(np.float32)
    np.testing.assert_array_equal(irdrop.exact(g, 0.0), g)


def test_exact_conserves_the_current_of_a_uniform_row():
    # two cells on one row, one column each: solve by hand (node equations), r = 1 kohm, G = 100 uS
    r, g = 1000.0, 100e-6
    # nodes: row a (after driver), row b, column ends ca, cb; unknowns solved with numpy as a check
    A = np.array([[1 / r + 1 / r + g, -1 / r, -g, 0],
                  [-1 / r, 1 / r + g, 0, -g],
                  [-g, 0, g + 1 / r, 0],
                  [0, -g, 0, g + 1 / r]])
    v = np.linalg.solve(A, np.array([1 / r, 0, 0, 0]))
    expected = np.array([v[2] / r, v[3] / r]) * 1e6
    np.testing.assert_allclose(irdrop.exact(np.array([[100.0, 100.0]]), r)[0], expected, rtol=1e-6)


@pytest.mark.parametrize("r_wire", [0.5, 2.0, 5.0])
def test_first_order_matches_exact_to_second_order(r_wire):
    """eps = r * max(A + B) is the first-order relative drop; the model's error is O(eps^2).
    Bound: |I_first - I_exact| <= eps^2 * |I_ideal| per column (the geometric series 1/(1+eps) = 1 - eps + eps^2 - ...
    bounds the remainder by eps^2 / (1 - eps) < 1.1 eps^2 for eps < 0.1), and the model must remove at least
    90 % of the drop."""
    rng = np.random.default_rng(1)
    g = rng.uniform(1.0, 25.0, (16, 16))
    v = rng.uniform(0, 1, (8, 16))
    ex = v @ irdrop.exact(g, r_wire)
    fo = v @ irdrop.first_order(g, r_wire)
    ideal = v @ g
    suffix = np.cumsum(g[:, ::-1], axis=1)[:, ::-1]
    eps = r_wire * 1e-6 * (np.cumsum(suffix, axis=1) + np.cumsum(np.cumsum(g, axis=0)[::-1], axis=0)[::-1]).max()
    assert eps < 0.1
    assert np.all(np.abs(fo - ex) <= 1.1 * eps ** 2 * np.abs(ideal))
    assert np.abs(fo - ex).max() <= 0.1 * np.abs(ideal - ex).max()
    assert np.all(ex < ideal)  # wire resistance only ever lowers the column currents here (all V >= 0)


def test_max_relative_drop_hand_case():
    g = np.array([[10.0, 0.0], [5.0, 20.0]])
    m = np.array([[9.0, 0.0], [5.0, 15.0]])
    assert irdrop.max_relative_drop(g, m) == 0.25  # cells lose 10%, -, 0%, 25%; zero cells are skipped
    assert irdrop.max_relative_drop(np.zeros((2, 2)), np.zeros((2, 2))) == 0.0


@pytest.mark.parametrize("model", ["exact", "first_order"])
def test_partly_filled_tile_equals_the_zero_padded_full_tile(model):
    """The used block of a 12x9 tile (first 5 rows, first 7 columns): the column currents still run down the
    whole column wire to the ADC, so the block's effective conductances equal those of the full tile with
    the unused cells at G = 0 (hand check of the geometry: the unused rows' segments are in series with the
    ground segment; unused columns carry no current)."""
    rng = np.random.default_rng(4)
    g = rng.uniform(1.0, 25.0, (5, 7))
    full = np.zeros((12, 9))
    full[:5, :7] = g
    r = 50.0
    fn = getattr(irdrop, model)
    part = fn(g, r, tile_rows=12)
    np.testing.assert_allclose(part, fn(full, r)[:5, :7], rtol=1e-5)
    alone = fn(g, r)  # the block solved as if it were a whole 5-row tile
    assert np.all(part < alone)  # the extra seven wire segments lose current in every cell
    m, drop = irdrop.apply(g, model, r, tile_rows=12)
    np.testing.assert_array_equal(m, part)
    assert drop == pytest.approx(irdrop.max_relative_drop(full, fn(full, r)), rel=1e-4)
    with pytest.raises(ValueError, match="tile_rows 4 < the 5 rows"):
        fn(g, r, tile_rows=4)
