import pickle

import numpy as np
import pytest
from sklearn.base import clone

import unfolded_sbl as us


def _random_problem(seed, n_channels=12, n_sources=40, n_times=30, n_samples=3):
    rng = np.random.default_rng(seed)
    fwd = us.ForwardModel(rng.normal(size=(n_channels, n_sources)),
                          rng.normal(size=(n_sources, 3)) * 0.05)
    X = np.zeros((n_samples, n_sources, n_times))
    for x in X:
        active = rng.choice(n_sources, 3, replace=False)
        x[active] = rng.normal(size=(3, n_times))
    noise = rng.uniform(0.05, 0.5, size=(n_samples, n_channels))
    Y = fwd.lead_field @ X + rng.normal(size=(n_samples, n_channels, n_times)) * np.sqrt(
        noise)[:, :, None]
    return fwd, Y, X


@pytest.mark.parametrize("noise", ["learn", "homoscedastic", "known"])
def test_cost_never_increases(noise):
    for seed in range(12):
        fwd, Y, _ = _random_problem(seed)
        est = us.ClassicalCB(fwd, noise=noise, n_iter=40, keep_history=True).fit(Y)
        kwargs = {"noise_var": np.full((len(Y), fwd.n_channels), 0.2)} if noise == "known" else {}
        est.predict(Y, **kwargs)
        cost = est.history_["cost"]
        assert cost.shape == (len(Y), 41)
        steps = np.diff(cost, axis=1)
        assert np.all(steps <= 1e-9 * np.abs(cost[:, :-1])), (seed, steps.max())
        assert np.all(cost[:, -1] < cost[:, 0])


def test_joint_noise_learning_recovers_sensor_noise(fwd):
    data = us.simulate(fwd, 8, random_state=1, n_times=300)
    est = us.ClassicalCB(fwd, noise="learn", n_iter=50).fit(data.sensors)
    est.predict(data.sensors)
    corr = np.corrcoef(np.log(est.noise_var_).ravel(), np.log(data.noise_var).ravel())[0, 1]
    assert corr > 0.8, corr


def test_known_noise_beats_joint_and_both_beat_sloreta(fwd):
    data = us.simulate(fwd, 16, random_state=2)
    joint = us.ClassicalCB(fwd, noise="learn").fit(data.sensors)
    known = us.ClassicalCB(fwd, noise="known").fit(data.sensors)
    err_joint = us.rmse(data.sources, joint.predict(data.sensors))
    err_known = us.rmse(data.sources, known.predict(data.sensors, noise_var=data.noise_var))
    assert err_known < err_joint < 0.8
    slor = us.SLORETA(fwd, output="current").fit()
    assert us.f1(data.sources, slor.predict(data.sensors)) < us.f1(
        data.sources, joint.predict(data.sensors))


def test_homoscedastic_learns_one_variance(small_fwd):
    rng = np.random.default_rng(0)
    Y = rng.normal(size=(2, 16, 20))
    est = us.ClassicalCB(small_fwd, noise="homoscedastic").fit(Y)
    est.predict(Y)
    assert np.allclose(est.noise_var_, est.noise_var_[:, :1])


def test_fixed_noise_array_and_covariance_agree(small_fwd):
    rng = np.random.default_rng(0)
    Y = rng.normal(size=(2, 16, 20))
    var = rng.uniform(0.5, 1.5, 16)
    a = us.ClassicalCB(small_fwd, noise=var).fit(Y).predict(Y)
    b = us.ClassicalCB(small_fwd, noise=np.diag(var)).fit(Y).predict(Y)
    c = us.ClassicalCB(small_fwd, noise="known").fit(Y).predict(Y, noise_var=np.tile(var, (2, 1)))
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a, c, rtol=1e-10, atol=1e-12)


def test_scale_invariance_and_2d_input(fwd, data):
    est = us.ClassicalCB(fwd, n_iter=10).fit(data.sensors)
    out = est.predict(data.sensors[:2])
    out_scaled = est.predict(data.sensors[:2] * 1e6)
    np.testing.assert_allclose(out_scaled, out * 1e6, rtol=1e-8, atol=1e-8 * np.abs(out_scaled).max())
    var = est.source_var_
    assert var.shape == (2, fwd.n_sources)
    two_d = est.predict(data.sensors[:2, :, 0])
    assert two_d.shape == (2, fwd.n_sources)


def test_float32_close_to_float64(fwd, data):
    a = us.ClassicalCB(fwd, n_iter=10).fit().predict(data.sensors[:2])
    b = us.ClassicalCB(fwd, n_iter=10, dtype="float32").fit().predict(data.sensors[:2])
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-3


def test_prune_threshold_and_tol(fwd, data):
    est = us.ClassicalCB(fwd, prune_threshold=0.01).fit()
    est.predict(data.sensors[:2])
    var = est.source_var_
    assert np.all((var == 0) | (var >= 0.01 * var.max(1, keepdims=True) * 0.999))
    early = us.ClassicalCB(fwd, n_iter=500, tol=1e-3).fit()
    early.predict(data.sensors[:2])
    assert 1 < early.n_iter_ < 500


def test_all_zero_data_gives_zero_sources(fwd, data):
    Y = data.sensors[:3].copy()
    Y[1] = 0.0
    est = us.ClassicalCB(fwd, n_iter=5).fit()
    out = est.predict(Y)
    assert np.all(np.isfinite(out))
    assert np.all(out[1] == 0) and np.any(out[0] != 0)
    assert np.all(est.source_var_[1] == 0)
    slor = us.SLORETA(fwd).fit().predict(Y)
    assert np.all(slor[1] == 0) and np.all(np.isfinite(slor))


def test_zero_lead_field_columns_get_zero_variance(small_fwd):
    L = small_fwd.lead_field.copy()
    L[:, [3, 7]] = 0.0
    fwd = us.ForwardModel(L, small_fwd.positions)
    Y = np.random.default_rng(0).normal(size=(2, 16, 10))
    est = us.ClassicalCB(fwd, n_iter=5).fit(Y)
    out = est.predict(Y)
    assert np.all(np.isfinite(out))
    assert np.all(out[:, [3, 7]] == 0) and np.all(est.source_var_[:, [3, 7]] == 0)
    assert np.all(np.isfinite(us.SLORETA(fwd).fit().predict(Y)))


def test_bad_inputs(fwd, data):
    est = us.ClassicalCB(fwd).fit()
    bad = data.sensors[:1].copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="X contains NaN"):
        est.predict(bad)
    with pytest.raises(ValueError, match=r"X has 10 channels but the forward model has 64"):
        est.predict(np.ones((1, 10, 5)))
    with pytest.raises(ValueError, match="X must be"):
        est.predict(np.ones(64))
    with pytest.raises(TypeError, match="X must be an array"):
        est.predict("data")
    with pytest.raises(ValueError, match="known noise: pass noise_var"):
        us.ClassicalCB(fwd, noise="known").fit().predict(data.sensors[:1])
    with pytest.raises(ValueError, match="noise_var must be positive"):
        us.ClassicalCB(fwd, noise="known").fit().predict(
            data.sensors[:1], noise_var=np.zeros((1, 64)))
    with pytest.raises(ValueError, match="noise variances must be positive"):
        us.ClassicalCB(fwd, noise=-np.ones(64)).fit()
    with pytest.raises(ValueError, match=r"noise must have shape \(64,\)"):
        us.ClassicalCB(fwd, noise=np.ones(3)).fit()
    with pytest.raises(ValueError, match="'noise' parameter of ClassicalCB must be a str "
                                         "among"):
        us.ClassicalCB(fwd, noise="loud").fit()
    with pytest.raises(ValueError, match="n_iter"):
        us.ClassicalCB(fwd, n_iter=0).fit()
    with pytest.raises(ValueError, match="init_source_var"):
        us.ClassicalCB(fwd, init_source_var=0.0).fit()
    with pytest.raises(ValueError, match="alpha"):
        us.SLORETA(fwd, alpha=-1).fit()
    with pytest.raises(TypeError, match="forward must be"):
        us.ClassicalCB(forward=3.5).fit()
    with pytest.raises(ValueError, match="neither a shipped template"):
        us.ClassicalCB(forward="nope").fit()
    # sklearn's parameter validation, and what it cannot say
    for bad in ({"n_iter": 2.5}, {"batch_size": 0}, {"dtype": "float16"}, {"tol": -1.0},
                {"keep_history": "yes"}, {"prune_threshold": -0.1}):
        with pytest.raises(ValueError, match=f"'{next(iter(bad))}' parameter of ClassicalCB"):
            us.ClassicalCB(fwd, **bad).fit()
    for bad in ({"init_noise_var": np.inf}, {"init_source_var": np.nan},
                {"prune_threshold": 1.0}):
        with pytest.raises(ValueError, match=f"'{next(iter(bad))}' parameter of ClassicalCB"):
            us.ClassicalCB(fwd, **bad).fit()
    with pytest.raises(ValueError, match="'alpha' parameter of SLORETA"):
        us.SLORETA(fwd, alpha=np.inf).fit()
    with pytest.raises(ValueError, match="'output' parameter of SLORETA"):
        us.SLORETA(fwd, output="z").fit()


def test_unfitted_predict_raises(fwd, data):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        us.ClassicalCB(fwd).predict(data.sensors)


def test_sklearn_conventions(fwd, data):
    est = us.ClassicalCB(fwd, n_iter=5)
    assert est.get_params()["n_iter"] == 5
    est.set_params(n_iter=7, noise="homoscedastic")
    twin = clone(est)
    assert twin.get_params()["n_iter"] == 7
    np.testing.assert_array_equal(twin.forward.lead_field, fwd.lead_field)
    est.fit(data.sensors)
    assert est.n_features_in_ == 64
    back = pickle.loads(pickle.dumps(est))
    np.testing.assert_allclose(back.predict(data.sensors[:1]), est.predict(data.sensors[:1]))
    assert est.__sklearn_tags__().input_tags.three_d_array
    assert 0 < est.score(data.sensors[:2], data.sources[:2]) <= 1
    for name in ("slor", "template"):
        model = us.SLORETA(fwd, alpha=0.5) if name == "slor" else us.ClassicalCB("biosemi64-ico3")
        params, cloned = model.get_params(), clone(model).get_params()
        assert params.keys() == cloned.keys()
        assert all(cloned[k] == params[k] for k in params if k != "forward")


def test_forward_can_be_template_name_or_mne_like(data):
    est = us.ClassicalCB("biosemi64-ico3", n_iter=3).fit(data.sensors)
    assert est.forward_.name == "biosemi64-ico3"
    assert est.predict(data.sensors[:1]).shape == (1, 1284, 100)


def test_pipeline_and_multimetric_gridsearch(fwd):
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.pipeline import FunctionTransformer, Pipeline

    data = us.simulate(fwd, 6, random_state=5, n_times=20)
    pipe = Pipeline([("identity", FunctionTransformer(validate=False)),
                     ("cb", us.ClassicalCB(fwd, n_iter=5))])
    pipe.fit(data.sensors, data.sources)
    assert pipe.predict(data.sensors).shape == data.sources.shape
    search = GridSearchCV(
        pipe, {"cb__noise": ["learn", "homoscedastic"]}, cv=KFold(2),
        scoring={"emd": us.emd_scorer, "f1": us.f1_scorer, "rmse": us.rmse_scorer,
                 "le": us.le_scorer},
        refit="f1", error_score="raise")
    search.fit(data.sensors, data.sources)
    assert set(search.best_params_) == {"cb__noise"}
    assert np.all(search.cv_results_["mean_test_emd"] < 0)
    assert np.all(search.cv_results_["mean_test_f1"] > 0)
    slor = GridSearchCV(us.SLORETA(fwd), {"alpha": [0.01, 1.0]}, cv=KFold(2),
                        scoring=us.emd_scorer, error_score="raise")
    slor.fit(data.sensors, data.sources)
    assert slor.best_params_["alpha"] in (0.01, 1.0)


def test_per_sample_stopping_does_not_depend_on_the_batch(fwd):
    """To convergence, each sample stops on its own: solving a batch of mixed
    difficulty gives what solving each sample alone gives."""
    data = us.simulate(fwd, 4, random_state=4, n_patches=(1, 12), snr_db=(0, 30), n_times=20)
    batch = us.ClassicalCB(fwd, n_iter=150, tol=1e-3, batch_size=4).fit()
    alone = us.ClassicalCB(fwd, n_iter=150, tol=1e-3, batch_size=1).fit()
    together, single = batch.predict(data.sensors), alone.predict(data.sensors)
    for a, b in zip(together, single):
        assert np.linalg.norm(a - b) <= 1e-6 * np.linalg.norm(b)
    np.testing.assert_allclose(batch.noise_var_, alone.noise_var_, rtol=1e-6)
    assert batch.n_iter_ == alone.n_iter_


def test_collapsed_sources_are_exactly_zero_and_stay_pruned(fwd):
    from unfolded_sbl._champagne import COLLAPSED

    data = us.simulate(fwd, 2, random_state=5, n_patches=(1, 3), n_times=20)
    est = us.ClassicalCB(fwd, n_iter=150, tol=1e-6).fit()
    est.predict(data.sensors)
    peak = est.source_var_.max(1, keepdims=True)
    alive = est.source_var_ > 0
    assert np.all(est.source_var_[alive] >= COLLAPSED * np.broadcast_to(peak, alive.shape)[alive]
                  * 0.99)
    assert alive.sum(1).max() < fwd.n_sources / 2  # most sources collapsed and were dropped
