import numpy as np
import pytest
import scipy.sparse as sp

import unfolded_sbl as us
from unfolded_sbl.metrics import local_maxima


@pytest.fixture
def line():
    """Five sources on a line 1 cm apart, chain adjacency."""
    positions = np.c_[np.arange(5) * 0.01, np.zeros(5), np.zeros(5)]
    adjacency = sp.diags([np.ones(4), np.ones(4)], [-1, 1], shape=(5, 5))
    return positions, adjacency


def _map(values, n_times=3):
    return np.repeat(np.asarray(values, float)[None, :, None], n_times, axis=2)


def test_identical_maps(line):
    positions, adjacency = line
    x = _map([0, 1, 0, 0, 2])
    assert us.rmse(x, x) == 0
    assert us.emd(x, x, positions) == pytest.approx(0, abs=1e-12)
    assert us.f1(x, x) == 1
    assert us.localization_error(x, x, positions, adjacency) == 0


def test_shifted_source_distance(line):
    positions, adjacency = line
    true, est = _map([0, 1, 0, 0, 0]), _map([0, 0, 0, 5.0, 0])
    assert us.emd(true, est, positions) == pytest.approx(0.02)
    assert us.localization_error(true, est, positions, adjacency) == pytest.approx(0.02)
    assert us.f1(true, est) == 0


def test_emd_splits_mass(line):
    positions, _ = line
    true, est = _map([1, 0, 0, 0, 0]), _map([0, 1, 1, 0, 0])
    assert us.emd(true, est, positions) == pytest.approx(0.5 * 0.01 + 0.5 * 0.02)


def test_rmse_values():
    true = _map([1, 2, 0, 0, 0])
    assert us.rmse(true, np.zeros_like(true)) == pytest.approx(1)
    assert us.rmse(true, 2 * true) == pytest.approx(1)
    assert us.rmse(true, 0.5 * true) == pytest.approx(0.25)


def test_f1_partial_overlap_and_threshold():
    true, est = _map([1, 1, 0, 0, 0]), _map([0, 1, 1, 0, 0])
    assert us.f1(true, est) == pytest.approx(0.5)
    # a weak source below 10 % of the peak is not in the support
    assert us.f1(_map([1, 0, 0, 0, 0.05]), _map([1, 0, 0, 0, 0])) == 1


def test_batched_and_per_sample(line):
    positions, adjacency = line
    true = np.concatenate([_map([1, 0, 0, 0, 0]), _map([0, 0, 1, 0, 0])])
    est = np.concatenate([_map([1, 0, 0, 0, 0]), _map([0, 0, 0, 0, 1])])
    per = us.localization_error(true, est, positions, adjacency, average=False)
    np.testing.assert_allclose(per, [0, 0.02])
    assert us.localization_error(true, est, positions, adjacency) == pytest.approx(0.01)
    np.testing.assert_allclose(us.f1(true, est, average=False), [1, 0])


def test_zero_estimate_is_finite(line):
    positions, adjacency = line
    true, zero = _map([0, 0, 1, 0, 0]), _map([0, 0, 0, 0, 0])
    # uniform map: mean distance from the middle source = (2+1+0+1+2)/5 cm
    assert us.emd(true, zero, positions) == pytest.approx(0.012)
    assert us.f1(true, zero) == 0
    assert us.localization_error(true, zero, positions, adjacency) == pytest.approx(0.04)


def test_local_maxima(line):
    _, adjacency = line
    mask = local_maxima(np.array([[3, 1, 2, 1, 0.1]]), adjacency)
    np.testing.assert_array_equal(mask[0], [True, False, True, False, False])


def test_bad_inputs(line):
    positions, adjacency = line
    x = _map([1, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="same shape"):
        us.rmse(x, x[:, :4])
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="est contains NaN"):
        us.rmse(x, bad)
    with pytest.raises(ValueError, match="all zero"):
        us.f1(np.zeros_like(x), x)
    with pytest.raises(ValueError, match="positions has 3 rows for 5 sources"):
        us.emd(x, x, positions[:3])
    with pytest.raises(ValueError, match="true must be"):
        us.rmse(np.zeros(5), x)
    with pytest.raises(ValueError, match="adjacency must have shape"):
        us.localization_error(x, x, positions, np.eye(3))


def test_scorers_signs(fwd, data):
    est = us.ClassicalCB(fwd, n_iter=3).fit(data.sensors[:2])
    pred = est.predict(data.sensors[:2])
    y = data.sources[:2]
    assert us.rmse_scorer(est, data.sensors[:2], y) == pytest.approx(-us.rmse(y, pred))
    assert us.f1_scorer(est, data.sensors[:2], y) == pytest.approx(us.f1(y, pred))
    assert us.emd_scorer(est, data.sensors[:2], y) == pytest.approx(
        -us.emd(y, pred, fwd.positions))
    assert us.le_scorer(est, data.sensors[:2], y) == pytest.approx(
        -us.localization_error(y, pred, fwd.positions, fwd.adjacency))
    with pytest.raises(ValueError, match="true sources"):
        us.rmse_scorer(est, data.sensors[:2], None)
    with pytest.raises(ValueError, match=r"fit\(X, y\)"):
        us.rmse_scorer(est, data.sensors[:2])  # how sklearn calls it after fit(X)


def test_grid_search_without_y_reports_the_scorer_message(fwd):
    import warnings

    from sklearn.model_selection import GridSearchCV

    d = us.simulate(fwd, 4, random_state=0, n_times=5)
    search = GridSearchCV(us.ClassicalCB(fwd, n_iter=2), {"n_iter": [2]}, cv=2, refit=False,
                          scoring={"rmse": us.rmse_scorer, "f1": us.f1_scorer})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        search.fit(d.sensors)
    messages = " ".join(str(w.message) for w in caught)
    assert "compares estimates with true sources" in messages
    assert "TypeError" not in messages
