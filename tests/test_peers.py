"""Cross-checks against MNE-Python and scikit-learn's estimator checks."""

import warnings

import numpy as np
import pytest

import unfolded_sbl as us

mne = pytest.importorskip("mne")


def test_gamma_only_matches_mne_gamma_map(fwd):
    """Known-noise ClassicalCB == MNE's convex-bounding gamma-MAP (update_mode=2)
    on a whitened problem (noise variance 1 after whitening)."""
    from mne.inverse_sparse._gamma_map import _gamma_map_opt

    data = us.simulate(fwd, 1, random_state=3)
    noise_std = np.sqrt(data.noise_var[0])
    Y = data.sensors[0] / noise_std[:, None]
    L = fwd.lead_field / noise_std[:, None]
    white = us.ForwardModel(L, fwd.positions, average_reference=False)
    n_iter = 15
    # MNE starts at gamma = 1 after scaling data by ||Y Y^T||_F^1/2 and L by ||L||_inf;
    # express that start in ClassicalCB's normalised units.
    mne_gamma0 = np.linalg.norm(Y @ Y.T, "fro") / np.linalg.norm(L, np.inf) ** 2
    ours_unit = np.mean(Y ** 2) / (np.sum(L ** 2) / L.shape[0])
    est = us.ClassicalCB(white, noise=np.ones(L.shape[0]), n_iter=n_iter,
                         init_source_var=mne_gamma0 / ours_unit, keep_history=True).fit()
    est.predict(Y[None])
    gammas = est.history_["source_var"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x_active, active = _gamma_map_opt(Y, L, alpha=1.0, maxit=n_iter, tol=0.0,
                                          update_mode=2, verbose=False)
    x_mne = np.zeros((L.shape[1], Y.shape[1]))
    x_mne[active] = x_active
    # MNE returns gamma_K * L^T S(gamma_{K-1}) Y: rebuild that from our history.
    model_cov = (L * gammas[-2]) @ L.T + np.eye(L.shape[0])
    x_ours = gammas[-1][:, None] * (L.T @ np.linalg.solve(model_cov, Y))
    assert np.linalg.norm(x_ours - x_mne) / np.linalg.norm(x_mne) < 1e-6


def _discrete_forward():
    """A small mne.Forward: 200 cortical sources of the template, sphere head model."""
    fwd = us.load_forward()
    idx = np.arange(0, fwd.n_sources, 6)
    info = mne.create_info(fwd.ch_names, 100.0, "eeg")
    info.set_montage(mne.channels.make_dig_montage(
        ch_pos=dict(zip(fwd.ch_names, fwd.ch_pos)), coord_frame="head"))
    src = mne.setup_volume_source_space(
        pos=dict(rr=fwd.positions[idx], nn=fwd.normals[idx]), verbose=False)
    sphere = mne.make_sphere_model("auto", "auto", info, verbose=False)
    forward = mne.make_forward_solution(info, None, src, sphere, meg=False, verbose=False)
    return mne.convert_forward_solution(forward, force_fixed=True, verbose=False), info


def test_sloreta_matches_mne_apply_inverse_up_to_scale():
    forward, info = _discrete_forward()
    ours_fwd = us.ForwardModel.from_mne(forward)
    rng = np.random.default_rng(0)
    data = rng.normal(size=(len(info.ch_names), 5)) * 1e-6
    evoked = mne.EvokedArray(data, info, verbose=False)
    evoked.set_eeg_reference("average", projection=True, verbose=False)
    noise_cov = mne.make_ad_hoc_cov(evoked.info, std=dict(eeg=1e-6), verbose=False)
    inv = mne.minimum_norm.make_inverse_operator(evoked.info, forward, noise_cov, loose=0.0,
                                                 depth=None, fixed=True, verbose=False)
    lambda2 = 1.0 / 9
    stc = mne.minimum_norm.apply_inverse(evoked, inv, lambda2, method="sLORETA",
                                         verbose=False)
    ours = us.SLORETA(ours_fwd, alpha=lambda2).fit().predict(data[None])[0]
    ratio = ours / stc.data
    # one global factor: MNE works on whitened data (here divided by 1e-6)
    np.testing.assert_allclose(ratio, np.median(ratio), rtol=1e-4)


def test_from_mne_forward_keeps_geometry():
    forward, info = _discrete_forward()
    ours = us.ForwardModel.from_mne(forward)
    assert ours.n_channels == 64 and ours.n_sources == forward["nsource"]
    np.testing.assert_allclose(ours.positions, forward["source_rr"])
    np.testing.assert_allclose(ours.lead_field.sum(0), 0, atol=1e-9)


# sklearn's generic checks draw X with 1-10 features; these estimators are bound to
# the channel count of their forward model, so checks that fit or predict on such
# data cannot apply.  Each failure must be one of these, for the reason given.
FIXED_CHANNELS = "data drawn with a channel count other than the forward model's"
NOT_APPLICABLE = {
    **{name: FIXED_CHANNELS for name in (
        "check_fit_score_takes_y", "check_dont_overwrite_parameters",
        "check_n_features_in_after_fitting", "check_estimators_dtypes", "check_dtype_object",
        "check_pipeline_consistency", "check_estimators_nan_inf", "check_estimators_pickle",
        "check_f_contiguous_array_estimator", "check_regressors_train",
        "check_regressor_data_not_an_array", "check_regressor_multioutput",
        "check_regressors_no_decision_function", "check_supervised_y_2d",
        "check_regressors_int", "check_methods_sample_order_invariance",
        "check_methods_subset_invariance", "check_fit2d_1sample", "check_fit2d_1feature",
        "check_dict_unchanged", "check_fit2d_predict1d", "check_estimators_empty_data_messages",
        "check_positive_only_tag_during_fit", "check_complex_data",
        "check_estimator_sparse_tag", "check_estimator_sparse_array",
        "check_estimator_sparse_matrix")},
}
MUST_PASS = {
    "check_no_attributes_set_in_init", "check_get_params_invariance", "check_set_params",
    "check_parameters_default_constructible", "check_estimator_cloneable",
    "check_estimators_unfitted", "check_fit_check_is_fitted", "check_fit_idempotent",
    "check_estimators_overwrite_params", "check_estimators_fit_returns_self",
    "check_n_features_in", "check_readonly_memmap_input", "check_mixin_order",
    "check_do_not_raise_errors_in_init_or_set_params", "check_estimator_repr",
}


@pytest.mark.parametrize("make", [lambda f: us.ClassicalCB(f, n_iter=3), us.SLORETA])
def test_sklearn_estimator_checks(make):
    from sklearn.utils.estimator_checks import check_estimator

    rng = np.random.default_rng(0)
    forward = us.ForwardModel(rng.normal(size=(2, 10)), rng.normal(size=(10, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(make(forward), on_fail=None)
    status = {}
    for r in results:
        status.setdefault(r["check_name"], set()).add(r["status"])
    failed = {name for name, s in status.items() if "failed" in s}
    assert failed <= set(NOT_APPLICABLE), failed - set(NOT_APPLICABLE)
    assert all(status.get(name) == {"passed"} for name in MUST_PASS), {
        n: status.get(n) for n in MUST_PASS}


def test_free_orientation_matches_mne_gamma_map_groups():
    """Free orientation (three dipoles per location, one variance): known-noise
    ClassicalCB == MNE's gamma_map with group_size=3 on a whitened problem."""
    from mne.inverse_sparse._gamma_map import _gamma_map_opt

    rng = np.random.default_rng(5)
    n_channels, n_locations, n_times = 30, 40, 50
    L = rng.normal(size=(n_channels, 3 * n_locations))
    positions = np.repeat(rng.normal(size=(n_locations, 3)) * 0.05, 3, axis=0)
    X = np.zeros((3 * n_locations, n_times))
    X[[3, 4, 5, 30, 31, 32]] = rng.normal(size=(6, n_times)) * 3.0
    Y = L @ X + rng.normal(size=(n_channels, n_times))
    free = us.ForwardModel(L, positions, average_reference=False, n_orient=3)
    n_iter = 15
    mne_gamma0 = np.linalg.norm(Y @ Y.T, "fro") / np.linalg.norm(L, np.inf) ** 2
    ours_unit = np.mean(Y ** 2) / (np.sum(L ** 2) / L.shape[0])
    est = us.ClassicalCB(free, noise=np.ones(n_channels), n_iter=n_iter,
                         init_source_var=mne_gamma0 / ours_unit, keep_history=True).fit()
    est.predict(Y[None])
    gammas = est.history_["source_var"][0]
    assert np.allclose(gammas[-1].reshape(-1, 3), gammas[-1].reshape(-1, 3)[:, :1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x_active, active = _gamma_map_opt(Y, L, alpha=1.0, maxit=n_iter, tol=0.0,
                                          update_mode=2, group_size=3, verbose=False)
    x_mne = np.zeros((L.shape[1], n_times))
    x_mne[active] = x_active
    model_cov = (L * gammas[-2]) @ L.T + np.eye(n_channels)
    x_ours = gammas[-1][:, None] * (L.T @ np.linalg.solve(model_cov, Y))
    assert np.linalg.norm(x_ours - x_mne) / np.linalg.norm(x_mne) < 1e-6
    # the grouped locations are found
    power = (est.predict(Y[None])[0] ** 2).sum(axis=1).reshape(-1, 3).sum(axis=1)
    assert set(np.argsort(power)[-2:]) == {1, 10}


def _free_forward():
    forward, info = _discrete_forward()
    free = mne.convert_forward_solution(
        mne.make_forward_solution(info, None, forward["src"], mne.make_sphere_model(
            "auto", "auto", info, verbose=False), meg=False, verbose=False),
        surf_ori=True, verbose=False)
    return free, info


def test_free_orientation_forward_and_apply_pick_ori():
    forward, info = _free_forward()
    free = us.ForwardModel.from_mne(forward, orientation="free")
    n_locations = forward["nsource"]
    assert free.n_orient == 3 and free.n_sources == 3 * n_locations
    # the normal components of the free model are the fixed model's lead field
    fixed = us.ForwardModel.from_mne(forward)
    np.testing.assert_allclose(free.lead_field[:, 2::3], fixed.lead_field, rtol=1e-4,
                               atol=1e-6 * np.abs(fixed.lead_field).max())
    rng = np.random.default_rng(1)
    X = np.zeros((3 * n_locations, 30))
    X[3 * 20:3 * 21] = rng.normal(size=(3, 30)) * 2e-8
    evoked = mne.EvokedArray(free.lead_field @ X + 1e-7 * rng.normal(size=(64, 30)), info,
                             verbose=False)
    out = {ori: us.apply(evoked, forward=free, pick_ori=ori, baseline=None)
           for ori in (None, "normal", "vector")}
    assert isinstance(out["vector"], mne.VolVectorSourceEstimate)
    assert out["vector"].data.shape == (n_locations, 3, 30)
    np.testing.assert_allclose(out[None].data, np.linalg.norm(out["vector"].data, axis=1))
    # vector estimates are in x, y, z (as MNE's): "normal" is their normal component
    normal = free.normals[2::3]
    np.testing.assert_allclose(out["normal"].data,
                               np.einsum("mdt,md->mt", out["vector"].data, normal),
                               atol=1e-10 * np.abs(out["normal"].data).max())
    assert np.argmax((out[None].data ** 2).sum(1)) == 20  # the active location
    with pytest.raises(ValueError, match="pick_ori='vector' needs a free-orientation"):
        us.apply(evoked, forward=fixed, pick_ori="vector", baseline=None)
    with pytest.raises(ValueError, match="pick_ori must be"):
        us.apply(evoked, forward=free, pick_ori="tangential", baseline=None)
    with pytest.raises(ValueError, match="needs a free-orientation forward"):
        us.ForwardModel.from_mne(mne.convert_forward_solution(
            forward, force_fixed=True, verbose=False), orientation="free")
