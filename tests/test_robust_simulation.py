"""The broader simulator and the head-model ensemble (training data of the shipped models)."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

import unfolded_sbl as us
from unfolded_sbl.head_models import HeadModelEnsemble, draw_member_params, make_member
from unfolded_sbl.simulate import ROBUST_SIMULATOR, Simulator


def _support_is_connected(adjacency, support):
    sub = sp.csr_matrix(adjacency)[support][:, support]
    return connected_components(sub, directed=False)[0] == 1


def test_mesh_patches_follow_the_cortex(fwd):
    kwargs = dict(n_patches=1, spread=(0.008, 0.008), random_state=0)
    mesh = Simulator(fwd, patch_distance="mesh", **kwargs).draw(12)
    euclid = Simulator(fwd, **kwargs).draw(12)
    mesh_connected = [_support_is_connected(fwd.adjacency, np.abs(s).sum(1) > 0)
                      for s in mesh.sources]
    assert all(mesh_connected)
    # straight-line patches jump across sulci and hemispheres: some come out in pieces
    assert not all(_support_is_connected(fwd.adjacency, np.abs(s).sum(1) > 0)
                   for s in euclid.sources)


def test_variable_window_and_log_uniform_draws(fwd):
    sim = Simulator(fwd, n_times=(5, 300), n_patches=(1, 40), log_uniform=True,
                    random_state=1)
    lengths = {sim.draw(2).sensors.shape[2] for _ in range(8)}
    assert len(lengths) > 1 and all(5 <= t <= 300 for t in lengths)
    counts = np.concatenate([sim.draw(16).n_active for _ in range(4)])
    assert counts.min() >= 1 and counts.max() <= 40
    assert np.median(counts) < 20.5  # log-uniform: focal samples are common


def test_noise_free_coloured_noise_and_bad_channels(fwd):
    clean_sim = Simulator(fwd, noise_free_prob=1.0, random_state=0)
    data = clean_sim.draw(3)
    np.testing.assert_allclose(data.sensors,
                               np.einsum("cs,nst->nct", fwd.lead_field, data.sources))
    assert np.all(data.noise_var > 0)
    def noise_corr(color):
        d = Simulator(fwd, noise_color=color, snr_db=(0, 0), random_state=2).draw(4)
        noise = d.sensors - np.einsum("cs,nst->nct", fwd.lead_field, d.sources)
        corr = np.array([np.corrcoef(n) for n in noise])
        return np.abs(corr[:, ~np.eye(64, dtype=bool)]).mean()
    assert noise_corr("coloured") > 2 * noise_corr("white")
    bad = Simulator(fwd, bad_channel_prob=1.0, random_state=3).draw(6)
    clean = np.einsum("cs,nst->nct", fwd.lead_field, bad.sources)
    flat = np.all(bad.sensors == 0, axis=2).sum(1)
    noisy = ((bad.sensors - clean).std(axis=2) > 5 * np.sqrt(np.mean(clean ** 2))).sum(1)
    assert np.all((flat + noisy >= 1) & (flat + noisy <= 3))


def test_robust_preset_runs_and_is_reproducible(fwd):
    a = Simulator(fwd, random_state=4, **ROBUST_SIMULATOR).draw(4)
    b = Simulator(fwd, random_state=4, **ROBUST_SIMULATOR).draw(4)
    np.testing.assert_array_equal(a.sensors, b.sensors)
    assert np.all(np.isfinite(a.sensors)) and np.all(a.noise_var > 0)


def _synthetic_ensemble(fwd, n_members=3, tilt=30.0):
    rng = np.random.default_rng(0)
    gains = rng.normal(size=(n_members, fwd.n_channels, fwd.n_sources, 3))
    gains[..., 2] = fwd.lead_field  # the normal direction is the nominal gain
    gains -= gains.mean(axis=1, keepdims=True)
    return HeadModelEnsemble(gains.astype(np.float32), [{}] * n_members, "test", tilt)


def test_head_models_project_the_sources(small_fwd, tmp_path):
    ens = _synthetic_ensemble(small_fwd, tilt=0.0)
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(ens.draw_lead_field(rng), small_fwd.lead_field, rtol=1e-5,
                               atol=1e-4 * np.abs(small_fwd.lead_field).max())
    tilted = _synthetic_ensemble(small_fwd).draw_lead_field(rng)
    assert not np.allclose(tilted, small_fwd.lead_field)
    def clean_draw(nominal_prob):
        sim = Simulator(small_fwd, head_models=_synthetic_ensemble(small_fwd),
                        nominal_prob=nominal_prob, noise_free_prob=1.0, random_state=0)
        data = sim.draw(3)
        return data.sensors, np.einsum("cs,nst->nct", small_fwd.lead_field, data.sources)
    sensors, nominal = clean_draw(1.0)
    np.testing.assert_allclose(sensors, nominal)
    sensors, nominal = clean_draw(0.0)
    assert not np.allclose(sensors, nominal)
    path = tmp_path / "ens.npz"
    ens.save(path)
    back = HeadModelEnsemble.load(path)
    np.testing.assert_array_equal(back.lead_fields, ens.lead_fields)
    path.write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="cannot read head-model ensemble"):
        HeadModelEnsemble.load(path)
    with pytest.raises(ValueError, match="head_models has"):
        Simulator(small_fwd, head_models=_synthetic_ensemble(us.load_forward()))


def test_one_real_member_resembles_the_template(fwd):
    """One BEM member (about 10 s): same channels and sources, topographies close."""
    from unfolded_sbl.templates import make_subjects_dir

    params = draw_member_params(np.random.default_rng(0))
    gain = make_member("biosemi64", "ico3", params, make_subjects_dir())
    assert gain.shape == (64, 1284, 3) and np.all(np.isfinite(gain))
    normal = gain[..., 2]
    corr = [np.corrcoef(normal[:, m], fwd.lead_field[:, m])[0, 1] for m in range(0, 1284, 11)]
    assert np.median(corr) > 0.9
    assert np.abs(gain.sum(axis=0)).max() < 1e-8 * np.abs(gain).max() * 64  # referenced


def test_training_mixture_and_ensemble_errors(small_fwd):
    mixture = [{"n_patches": (1, 2), "n_times": 12},
               {"n_patches": (1, 3), "n_times": (8, 16), "noise_color": "coloured",
                "noise_free_prob": 0.3, "bad_channel_prob": 0.3}]
    net = us.UnfoldedSBLRegressor(small_fwd, n_layers=3, max_epochs=2, steps_per_epoch=3,
                                  progressive_steps=0, batch_size=4, n_val=8,
                                  loss="classical_relative", simulator_params=mixture,
                                  random_state=0).fit_simulated()
    assert len(net.history_) == 2
    assert len(net.history_[-1]["val_ratio_parts"]) == 2
    assert np.isfinite(net.history_[-1]["loss"])
    more = net.set_params(warm_start=True, max_epochs=1).fit_simulated()
    assert len(more.history_) == 3  # warm start continues the record
    with pytest.raises(ValueError, match="shipped template"):
        us.UnfoldedSBLRegressor(small_fwd, max_epochs=1, n_val=0,
                                simulator_params={"head_models": "ensemble"}).fit_simulated()
    with pytest.raises(ValueError, match="loss must be"):
        us.UnfoldedSBLRegressor(small_fwd, loss="l1").fit_simulated()


def test_select_best_keeps_the_best_validation_epoch(small_fwd):
    net = us.UnfoldedSBLRegressor(small_fwd, n_layers=3, max_epochs=4, steps_per_epoch=2,
                                  progressive_steps=0, batch_size=4, n_val=8,
                                  learning_rate=0.05, loss="classical_relative",
                                  select_best=True, random_state=0,
                                  simulator_params={"n_patches": (1, 2), "n_times": 10})
    net.fit_simulated()
    ratios = [h["val_ratio"] for h in net.history_]
    assert net.best_epoch_ == int(np.argmin(ratios))


def test_relative_selection_never_keeps_worse_weights_than_the_start(small_fwd):
    """select_best="relative" keeps the epoch with the lowest worst-part error relative
    to the network's own before the joint phase, or the starting weights (epoch -1)
    when every epoch is worse than the start on some part."""
    params = dict(n_layers=3, steps_per_epoch=2, progressive_steps=0, batch_size=4,
                  n_val=8, loss="classical_relative", random_state=0,
                  simulator_params=[{"n_patches": (1, 2), "n_times": 10},
                                    {"n_patches": (3, 4), "n_times": 10}])
    for rate in (0.005, 0.5):
        start = us.UnfoldedSBLRegressor(small_fwd, max_epochs=2, learning_rate=0.01,
                                        **params).fit_simulated()
        before = {k: v.clone() for k, v in start.network_.state_dict().items()}
        net = start.set_params(warm_start=True, max_epochs=3, learning_rate=rate,
                               select_best="relative").fit_simulated()
        parts = np.array([h["val_ratio_parts"] for h in net.history_[-3:]])
        relative = (parts / np.array(net.start_validation_["val_ratio_parts"])).max(axis=1)
        expected = int(np.argmin(relative)) if relative.min() < 1 else -1
        assert net.best_epoch_ == expected, (rate, relative)
        if expected == -1:
            for k, v in net.network_.state_dict().items():
                torch.testing.assert_close(v, before[k])
    with pytest.raises(ValueError, match="select_best must be"):
        us.UnfoldedSBLRegressor(small_fwd, select_best="worst").fit_simulated()
