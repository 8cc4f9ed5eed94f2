"""Numerical safety of the solver and the network: referenced model, safe
factorisation, bounded corrections, float32, ONNX at high SNR."""

import numpy as np
import pytest
import torch

import unfolded_sbl as us
from unfolded_sbl._champagne import (
    _PairOps,
    covariance_factor,
    reference_projector,
    referenced_model_cov,
    safe_cholesky,
    subtract_reference,
)
from unfolded_sbl.network import MAX_CORRECTION


def _forward(average_reference=True, seed=0, n_channels=16, n_sources=60):
    rng = np.random.default_rng(seed)
    return us.ForwardModel(rng.normal(size=(n_channels, n_sources)) * 50,
                           rng.normal(size=(n_sources, 3)) * 0.03,
                           average_reference=average_reference)


def test_reference_projector_detects_average_reference():
    referenced = torch.as_tensor(_forward(True).lead_field)
    raw = torch.as_tensor(_forward(False).lead_field)
    n = referenced.shape[0]
    np.testing.assert_allclose(reference_projector(referenced).numpy(), np.full((n, n), 1 / n),
                               atol=1e-12)
    assert torch.all(reference_projector(raw) == 0)


def test_safe_cholesky_factorises_singular_psd_matrices():
    rng = np.random.default_rng(0)
    low_rank = rng.normal(size=(4, 10, 2))
    matrix = torch.as_tensor(low_rank @ low_rank.transpose(0, 2, 1))  # rank 2, singular
    matrix[0] = torch.eye(10)  # a healthy one stays exact
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.cholesky(matrix - 1e-9 * torch.eye(10))
    chol = safe_cholesky(matrix - 1e-9 * torch.eye(10))
    assert torch.all(torch.isfinite(chol))
    np.testing.assert_array_equal(chol[0].numpy(), np.eye(10) * np.sqrt(1 - 1e-9))
    with pytest.raises(ValueError, match="not positive definite"):
        safe_cholesky(-torch.eye(3)[None])


@pytest.mark.parametrize("noise", ["learn", "homoscedastic"])
def test_cost_never_increases_without_average_reference(noise):
    fwd = _forward(average_reference=False)
    data = us.simulate(fwd, 3, random_state=0, n_patches=(1, 3), n_times=20)
    est = us.ClassicalCB(fwd, noise=noise, n_iter=15, keep_history=True).fit()
    est.predict(data.sensors)
    assert np.all(np.diff(est.history_["cost"], axis=1) <= 1e-9)


def test_untrained_network_equals_classical_without_average_reference():
    fwd = _forward(average_reference=False)
    data = us.simulate(fwd, 4, random_state=1, n_patches=(1, 3), n_times=20)
    ref = us.ClassicalCB(fwd, n_iter=6).fit().predict(data.sensors)
    net = us.UnfoldedSBLRegressor(fwd, n_layers=6, max_epochs=0).fit(data.sensors,
                                                                    data.sources)
    out = net.predict(data.sensors)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5


def test_classical_flag_skips_corrections(fwd, data):
    trained = us.load_pretrained("deep-cb-joint", forward=fwd)
    untrained = us.UnfoldedSBLRegressor(fwd, max_epochs=0).fit_simulated()
    Y, _, _ = trained._normalise(data.sensors[:2])
    lead_field = trained._tensor(trained.lead_field_)
    with torch.no_grad():
        skipped = trained.network_(Y, lead_field, classical=True)["sources"]
        classical = untrained.network_(Y, lead_field)["sources"]
        corrected = trained.network_(Y, lead_field)["sources"]
    torch.testing.assert_close(skipped, classical)
    assert not torch.allclose(corrected, classical)


def _wild_network(fwd, correction, scale=30.0):
    """An MLP/attention network whose corrections are far from zero everywhere."""
    rng = np.random.default_rng(0)
    net = us.UnfoldedSBLRegressor(fwd, correction=correction, n_layers=8, max_epochs=0).fit(
        rng.normal(size=(1, fwd.n_channels, 3)), rng.normal(size=(1, fwd.n_sources, 3)))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.network_.parameters():
            p.add_(scale * torch.randn_like(p))
    return net


@pytest.mark.parametrize("correction", ["mlp", "graph", "attention"])
def test_bounded_corrections_keep_every_output_finite(correction):
    fwd = _forward()
    net = _wild_network(fwd, correction)
    rng = np.random.default_rng(0)
    inputs = [us.simulate(fwd, 3, random_state=2, snr_db=(50, 60), n_times=20).sensors,
              np.einsum("cs,nst->nct", fwd.lead_field, rng.normal(size=(3, 60, 4))),  # noise-free
              rng.normal(size=(3, 16, 1)) * 1e-12, rng.normal(size=(3, 16, 30)) * 1e3]
    for X in inputs:
        out = net.predict(X)
        assert np.all(np.isfinite(out)) and np.all(np.isfinite(net.noise_var_))
        for layer in net.predict_trajectory(X)[:-1]:
            for key in ("source_correction", "noise_correction"):
                # None: the regime check solved the whole batch classically (T = 1)
                assert ((layer[key] is None and net.classical_fallback_.all())
                        or np.abs(layer[key]).max() <= MAX_CORRECTION)


def test_float32_network_survives_high_snr_and_noise_free_data(fwd):
    net = us.UnfoldedSBLRegressor(fwd, max_epochs=0, dtype="float32").fit_simulated()
    high = us.simulate(fwd, 4, random_state=0, snr_db=(50, 60))
    noise_free = np.einsum("cs,nst->nct", fwd.lead_field, high.sources)
    for X in (high.sensors, noise_free):
        out = net.predict(X)
        assert np.all(np.isfinite(out))


def test_float64_network_matches_classical_at_high_snr(fwd):
    data = us.simulate(fwd, 4, random_state=0, snr_db=(50, 60))
    ref = us.ClassicalCB(fwd).fit().predict(data.sensors)
    out = us.UnfoldedSBLRegressor(fwd, max_epochs=0).fit_simulated().predict(data.sensors)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5


def test_onnx_matches_torch_at_high_snr(tmp_path):
    fwd = _forward()
    net = _wild_network(fwd, "mlp", scale=0.1)
    path = us.export_onnx(net, tmp_path / "net.onnx")
    onnx_est = us.OnnxSBLRegressor(path, forward=fwd).fit()
    for snr in ((5, 10), (30, 40), (50, 60)):
        X = us.simulate(fwd, 4, random_state=3, snr_db=snr, n_times=20).sensors
        ref, out = net.predict(X), onnx_est.predict(X)
        assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5, snr


def test_tiny_known_noise_is_floored(fwd, data):
    est = us.load_pretrained("deep-cb-known", forward=fwd)
    tiny = np.full((2, 64), 1e-40)
    out = est.predict(data.sensors[:2], noise_var=tiny)
    assert np.all(np.isfinite(out))


def test_training_skips_non_finite_batches():
    from unfolded_sbl.training import Trainer, TrainSettings

    fwd = _forward()
    est = us.UnfoldedSBLRegressor(fwd, n_layers=3, max_epochs=0).fit_simulated()
    data = us.simulate(fwd, 4, random_state=0, n_times=10)
    Y, X, _ = est._normalise(data.sensors, data.sources)
    Y[0, 0, 0] = float("nan")  # a poisoned batch
    before = {k: v.clone() for k, v in est.network_.state_dict().items()}
    trainer = Trainer(est.network_, est._tensor(est.lead_field_), lambda *_: (Y, X, None),
                      None, TrainSettings(max_epochs=1, steps_per_epoch=2, progressive_steps=0,
                                          batch_size=4, verbose=False))
    history = trainer.run()
    assert trainer.state["skipped"] == 2 and np.isnan(history[0]["loss"])
    for key, value in est.network_.state_dict().items():
        torch.testing.assert_close(value, before[key])


@pytest.mark.parametrize("correction", ["mlp", "attention"])
def test_legacy_three_input_weights_load_with_the_same_function(correction):
    from unfolded_sbl.network import LEGACY_N_FEATURES, upgrade_state_dict

    fwd = _forward()
    net = _wild_network(fwd, correction, scale=0.1)
    state = net.network_.state_dict()
    legacy = {}
    for key, value in state.items():
        if key.endswith(("hidden.weight", "embed.weight")) and "mlp." not in key:
            value[:, LEGACY_N_FEATURES:] = 0.0  # what a legacy model computes
            legacy[key] = value[:, :LEGACY_N_FEATURES].clone()
        else:
            legacy[key] = value
    net.network_.load_state_dict(state)
    X = us.simulate(fwd, 2, random_state=0, n_times=10).sensors
    expected = net.predict(X)
    net.network_.load_state_dict(upgrade_state_dict(legacy))
    np.testing.assert_array_equal(net.predict(X), expected)


@pytest.mark.parametrize("exporting, entries_first", [(False, False), (True, False),
                                                      (True, True)])
def test_pair_products_in_either_layout_equal_the_direct_products(monkeypatch, exporting,
                                                                  entries_first):
    """Every path of the pair products (eager torch; graphs batch first: float64;
    graphs entries first: float32) computes L diag(g) L^T and diag(L^T A L)."""
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: exporting)
    gen = torch.Generator().manual_seed(0)
    lead_field = torch.randn(7, 30, dtype=torch.float64, generator=gen)
    source_var = torch.rand(9, 30, dtype=torch.float64, generator=gen)
    half = torch.randn(9, 7, 7, dtype=torch.float64, generator=gen)
    sym = half + half.transpose(-1, -2)
    ops = _PairOps(lead_field, batch_size=9, paired=True)
    ops.entries_first = entries_first
    expected_cov = (lead_field * source_var.unsqueeze(-2)) @ lead_field.T
    torch.testing.assert_close(ops.signal_cov(source_var), expected_cov)
    first, second = ops.quad_diag(sym, 2 * sym)
    expected = ((sym @ lead_field) * lead_field).sum(-2)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, 2 * expected)


@pytest.mark.parametrize("n_times, rank", [(3, 3), (40, 7), (40, 2), (40, 0)])
def test_covariance_factor_reproduces_the_data_covariance(n_times, rank):
    """``V V^T = Y Y^T / T`` for short and long windows, rank-deficient and zero data."""
    gen = torch.Generator().manual_seed(0)
    Y = (torch.randn(3, 7, rank, dtype=torch.float64, generator=gen)
         @ torch.randn(3, rank, n_times, dtype=torch.float64, generator=gen))
    V = covariance_factor(Y)
    assert V.shape == (3, 7, min(n_times, 7))
    torch.testing.assert_close(V @ V.mT, Y @ Y.mT / n_times, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("referenced", [True, False])
@pytest.mark.parametrize("exporting", [False, True])
def test_referenced_model_cov_equals_the_matrix_formula(monkeypatch, referenced, exporting):
    """The element-wise assembly equals H (signal + diag(d)) H + c R with
    c = mean diag(signal + H diag(d) H), the jitter on the diagonal, and the
    precision subtraction equals inverse - R / c."""
    gen = torch.Generator().manual_seed(0)
    n, batch = 6, 4
    lead_field = torch.randn(n, 20, dtype=torch.float64, generator=gen)
    if referenced:
        lead_field = lead_field - lead_field.mean(0, keepdim=True)
    ref = reference_projector(lead_field)
    assert bool((ref != 0).any()) == referenced
    eye = torch.eye(n, dtype=torch.float64)
    proj = eye - ref
    half = torch.randn(batch, n, n, dtype=torch.float64, generator=gen)
    signal = proj @ (half @ half.mT) @ proj
    noise = torch.rand(batch, n, dtype=torch.float64, generator=gen) + 0.1
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: exporting)
    model_cov, scale = referenced_model_cov(signal, noise, ref, eye, jitter=1e-3)
    full = signal + proj @ torch.diag_embed(noise) @ proj
    expected_scale = torch.diagonal(full, dim1=-2, dim2=-1).mean(-1).reshape(-1, 1, 1)
    expected = full + expected_scale * ref + 1e-3 * expected_scale * eye
    torch.testing.assert_close(scale, expected_scale, rtol=1e-12, atol=0)
    torch.testing.assert_close(model_cov, expected, rtol=1e-12, atol=1e-12)
    inverse = torch.linalg.inv(model_cov)
    torch.testing.assert_close(subtract_reference(inverse, ref, scale), inverse - ref / scale,
                               rtol=1e-12, atol=1e-14)


def test_corrections_fade_between_the_documented_noise_levels_and_window_lengths():
    """The corrections' weight is 1 at a noise level of -30 dB of the data power and
    T >= 10, 0 at -40 dB or T <= 3, linear in dB between, and never grows again along
    the layers once a sample's noise estimate has left the trained range."""
    from unfolded_sbl.network import TRAINED_N_TIMES, TRAINED_NOISE_DB, _validity

    assert TRAINED_NOISE_DB == (-40.0, -30.0) and TRAINED_N_TIMES == (3.0, 10.0)
    levels_db = torch.tensor([-20.0, -30.0, -35.0, -40.0, -60.0], dtype=torch.float64)
    noise = (10.0 ** (levels_db / 10)).unsqueeze(1).expand(-1, 8)
    long = torch.tensor(100.0, dtype=torch.float64)
    weight, by_noise = _validity(noise, long)
    np.testing.assert_allclose(weight.squeeze(1).numpy(), [1.0, 1.0, 0.5, 0.0, 0.0],
                               atol=1e-12)
    np.testing.assert_array_equal(weight.numpy(), by_noise.numpy())
    for n_times, expected in [(3.0, 0.0), (10.0, 1.0), (np.sqrt(30.0), 0.5)]:
        weight, _ = _validity(noise[:1], torch.tensor(n_times, dtype=torch.float64))
        assert float(weight) == pytest.approx(expected, abs=1e-12)
    previous = torch.full((5, 1), 0.25, dtype=torch.float64)
    weight, by_noise = _validity(noise, long, previous)
    assert torch.all(by_noise <= previous) and torch.all(weight <= 0.25)
