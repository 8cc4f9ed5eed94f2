import numpy as np
import pytest
import torch
from sklearn.base import clone

import unfolded_sbl as us
from unfolded_sbl.network import UnfoldedChampagne
from unfolded_sbl.training import relative_error


@pytest.fixture(scope="module")
def tiny():
    """A 16-channel, 60-source problem with simulated data."""
    rng = np.random.default_rng(0)
    fwd = us.ForwardModel(rng.normal(size=(16, 60)) * 50, rng.normal(size=(60, 3)) * 0.03,
                          name="tiny")
    data = us.simulate(fwd, 24, random_state=1, n_patches=(1, 3), n_times=20)
    return fwd, data


@pytest.mark.parametrize("learn_noise", [True, False])
@pytest.mark.parametrize("correction", ["none", "bias", "mlp", "graph", "attention"])
def test_untrained_network_equals_classical(tiny, correction, learn_noise):
    fwd, data = tiny
    nv = None if learn_noise else data.noise_var
    classical = us.ClassicalCB(fwd, noise="learn" if learn_noise else "known", n_iter=6)
    ref = classical.fit().predict(data.sensors[:4], noise_var=None if nv is None else nv[:4])
    net = us.UnfoldedSBLRegressor(fwd, correction=correction, learn_noise=learn_noise,
                                  n_layers=6, max_epochs=0, dtype="float64")
    net.fit(data.sensors, data.sources, noise_var=nv)
    out = net.predict(data.sensors[:4], noise_var=None if nv is None else nv[:4])
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5
    np.testing.assert_allclose(net.source_var_, classical.source_var_, rtol=1e-5,
                               atol=1e-5 * classical.source_var_.max())
    np.testing.assert_allclose(net.noise_var_, classical.noise_var_, rtol=1e-5)


def test_top_k_attention(tiny):
    """Attention over the sources of largest variance: exactly classical at init,
    global attention when k covers every source, something else when it does not."""
    fwd, data = tiny
    X = data.sensors[:4]
    ref = us.ClassicalCB(fwd, n_iter=6).fit().predict(X)
    nets = {}
    for keys in (None, 8, 60):
        net = us.UnfoldedSBLRegressor(fwd, correction="attention", attention_keys=keys,
                                      n_layers=6, max_epochs=0, dtype="float64")
        net.fit(data.sensors, data.sources)
        out = net.predict(X)
        assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5
        torch.manual_seed(0)
        with torch.no_grad():
            for p in net.network_.parameters():
                p.add_(0.05 * torch.randn_like(p))
        nets[keys] = net.predict(X)
    np.testing.assert_allclose(nets[60], nets[None], rtol=1e-10)
    assert np.linalg.norm(nets[8] - nets[None]) > 1e-6 * np.linalg.norm(nets[None])
    with pytest.raises(ValueError, match="attention_keys"):
        us.UnfoldedSBLRegressor(fwd, correction="attention", attention_keys=0).fit(
            data.sensors, data.sources)


def test_untrained_equals_classical_on_template_batched(fwd, data):
    """The paired (batch >= 8) products on the default template, 25 layers."""
    ref = us.ClassicalCB(fwd).fit().predict(data.sensors)
    net = us.UnfoldedSBLRegressor(fwd, max_epochs=0, dtype="float64").fit(data.sensors,
                                                                          data.sources)
    out = net.predict(data.sensors)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5


def test_gradients_reach_every_correction(tiny):
    fwd, data = tiny
    for correction in ("bias", "mlp", "graph", "attention"):
        net = UnfoldedChampagne(n_layers=4, correction=correction,
                                noise_correction="mlp" if correction != "bias" else "bias",
                                n_sources=60, n_channels=16).double()
        # move every zero-initialised output away from zero so that all weights get
        # gradient (at exactly zero, hidden-layer gradients vanish by construction)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.01 * torch.randn_like(p))
        est = us.UnfoldedSBLRegressor(fwd, max_epochs=0, dtype="float64").fit(
            data.sensors, data.sources)
        Y, X, _ = est._normalise(data.sensors[:4], data.sources[:4])
        geometry = est.set_params(correction=correction)._geometry()
        out = net(Y, torch.as_tensor(est.lead_field_), return_layers=(1,), **geometry)
        loss = relative_error(out["sources"], X) + relative_error(out["intermediate"][1], X)
        loss.backward()
        for name, p in net.named_parameters():
            assert p.grad is not None and torch.any(p.grad != 0), (correction, name)


@pytest.mark.parametrize("n_times", [40, 9])
def test_compressed_training_loss_is_exact(tiny, n_times):
    """Compressing a batch onto the row space of Y changes neither the loss nor its
    gradient (classical-relative loss, deep supervision, non-zero corrections)."""
    from unfolded_sbl.training import Trainer, TrainSettings

    fwd, _ = tiny
    data = us.simulate(fwd, 6, random_state=3, n_patches=(1, 3), n_times=n_times)
    est = us.UnfoldedSBLRegressor(fwd, correction="mlp", n_layers=5, max_epochs=0,
                                  dtype="float64").fit(data.sensors, data.sources)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in est.network_.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = tuple(est._normalise(data.sensors, data.sources))
    results = []
    for compress in (False, True):
        settings = TrainSettings(batch_size=6, loss="classical_relative", n_deep=2,
                                 compress=compress, verbose=False)
        trainer = Trainer(est.network_, torch.as_tensor(est.lead_field_),
                          lambda size, rng: batch, None, settings, random_state=0)
        est.network_.zero_grad()
        loss = trainer._loss()
        loss.backward()
        grads = torch.cat([p.grad.reshape(-1) for p in est.network_.parameters()])
        results.append((loss.item(), grads))
    (loss_full, grad_full), (loss_small, grad_small) = results
    assert loss_small == pytest.approx(loss_full, rel=1e-10)
    assert torch.linalg.norm(grad_small - grad_full) <= 1e-8 * torch.linalg.norm(grad_full)
    assert torch.linalg.norm(grad_full) > 0


def test_tiny_training_lowers_validation_loss(tiny, tmp_path):
    fwd, data = tiny
    net = us.UnfoldedSBLRegressor(fwd, correction="mlp", n_layers=4, max_epochs=3,
                                  steps_per_epoch=6, progressive_steps=3, batch_size=8,
                                  learning_rate=3e-3, n_val=16, random_state=0,
                                  simulator_params={"n_patches": (1, 3), "n_times": 20})
    net.fit_simulated()
    untrained = us.UnfoldedSBLRegressor(fwd, correction="mlp", n_layers=4, max_epochs=0,
                                        n_val=16, random_state=0,
                                        simulator_params={"n_patches": (1, 3),
                                                          "n_times": 20}).fit_simulated()
    val = us.simulate(fwd, 32, random_state=9, n_patches=(1, 3), n_times=20)
    before = us.rmse(val.sources, untrained.predict(val.sensors))
    after = us.rmse(val.sources, net.predict(val.sensors))
    # both phases are recorded: 3 progressive layers, then 3 joint epochs
    phases = [h["phase"] for h in net.history_]
    assert phases == ["progressive"] * 3 + ["joint"] * 3
    assert [h["layer"] for h in net.history_[:3]] == [0, 1, 2]
    assert sum(h["steps"] for h in net.history_) == 3 * 3 + 3 * 6
    assert "val_rmse" in net.history_[3] and np.isfinite(net.history_[0]["loss"])
    assert after < before


def test_checkpoint_resume_gives_same_result(tiny, tmp_path, monkeypatch):
    from unfolded_sbl.training import Trainer

    fwd, data = tiny
    params = dict(correction="mlp", n_layers=3, max_epochs=3, steps_per_epoch=2,
                  progressive_steps=1, batch_size=4, n_val=4, random_state=0)
    full = us.UnfoldedSBLRegressor(fwd, **params).fit(data.sensors, data.sources)
    ckpt = tmp_path / "train.ckpt"
    save = Trainer._save

    def interrupt_after_first_epoch(self, *args):
        save(self, *args)
        if self.state.get("phase") == "joint" and self.state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save", interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        us.UnfoldedSBLRegressor(fwd, checkpoint=str(ckpt), **params).fit(data.sensors,
                                                                         data.sources)
    monkeypatch.setattr(Trainer, "_save", save)
    resumed = us.UnfoldedSBLRegressor(fwd, checkpoint=str(ckpt), **params)
    resumed.fit(data.sensors, data.sources)
    assert [h.get("epoch", h.get("layer")) for h in resumed.history_] == [0, 1, 0, 1, 2]
    assert [h["phase"] for h in resumed.history_] == ["progressive"] * 2 + ["joint"] * 3
    np.testing.assert_allclose(resumed.predict(data.sensors[:2]),
                               full.predict(data.sensors[:2]), rtol=1e-5)


def test_save_load_roundtrip_and_errors(tiny, tmp_path):
    fwd, data = tiny
    net = us.UnfoldedSBLRegressor(fwd, correction="mlp", n_layers=3, max_epochs=1,
                                  steps_per_epoch=2, progressive_steps=1, batch_size=4,
                                  n_val=0, random_state=0).fit(data.sensors, data.sources)
    path = tmp_path / "m.pt"
    net.save(path)
    back = us.UnfoldedSBLRegressor.load(path, forward=fwd)
    np.testing.assert_array_equal(back.predict(data.sensors[:3]), net.predict(data.sensors[:3]))
    raw = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="corrupted"):
        us.UnfoldedSBLRegressor.load(tmp_path / "trunc.pt", forward=fwd)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an unfolded_sbl model"):
        us.UnfoldedSBLRegressor.load(tmp_path / "other.pt", forward=fwd)
    with pytest.raises(ValueError, match="custom forward model"):
        us.UnfoldedSBLRegressor.load(path)


def test_fine_tuning_on_a_channel_subset_of_a_template(fwd, tmp_path):
    """A template without its bad channels is not the template: its validation data
    and its saved forward name must not come from the full cap (they did, and
    fit_simulated failed on the perturbed template's 64 channels)."""
    sub = fwd.pick_channels(fwd.ch_names[:20])
    net = us.UnfoldedSBLRegressor(sub, correction="mlp", n_layers=2, max_epochs=1,
                                  steps_per_epoch=1, progressive_steps=0, batch_size=2,
                                  n_val=2, random_state=0,
                                  simulator_params={"n_times": 10}).fit_simulated()
    path = tmp_path / "sub.pt"
    net.save(path)
    assert torch.load(path, weights_only=False)["forward_name"] is None
    with pytest.raises(ValueError, match="custom forward model"):
        us.UnfoldedSBLRegressor.load(path)
    X = us.simulate(sub, 2, random_state=0, n_times=10).sensors
    back = us.UnfoldedSBLRegressor.load(path, forward=sub)
    np.testing.assert_array_equal(back.predict(X), net.predict(X))


def test_mlp_runs_on_other_forward_bias_refuses(tiny, tmp_path):
    fwd, data = tiny
    rng = np.random.default_rng(5)
    other = us.ForwardModel(rng.normal(size=(10, 40)), rng.normal(size=(40, 3)) * 0.03)
    for correction in ("mlp", "bias"):
        net = us.UnfoldedSBLRegressor(fwd, correction=correction, noise_correction="none",
                                      n_layers=3, max_epochs=0).fit(data.sensors, data.sources)
        path = tmp_path / f"{correction}.pt"
        net.save(path)
        if correction == "mlp":
            moved = us.UnfoldedSBLRegressor.load(path, forward=other)
            assert moved.predict(rng.normal(size=(2, 10, 5))).shape == (2, 40, 5)
        else:
            with pytest.raises(ValueError, match="tied to 16 channels x 60 sources"):
                us.UnfoldedSBLRegressor.load(path, forward=other)


def test_scale_invariance(tiny):
    fwd, data = tiny
    net = us.UnfoldedSBLRegressor(fwd, correction="mlp", n_layers=3, max_epochs=1,
                                  steps_per_epoch=2, progressive_steps=1, batch_size=4,
                                  n_val=0, dtype="float64", random_state=0)
    net.fit(data.sensors, data.sources)
    out = net.predict(data.sensors[:2])
    small = net.predict(data.sensors[:2] * 1e-6)
    np.testing.assert_allclose(small, out * 1e-6, rtol=1e-6, atol=1e-6 * np.abs(small).max())


def test_trajectory(tiny):
    fwd, data = tiny
    net = us.UnfoldedSBLRegressor(fwd, correction="mlp", n_layers=4, max_epochs=0).fit(
        data.sensors, data.sources)
    layers = net.predict_trajectory(data.sensors[:2])
    assert len(layers) == 4
    assert layers[0]["source_correction"].shape == (2, 60)
    assert layers[-1]["source_correction"] is None  # the last layer is classical
    np.testing.assert_allclose(layers[-1]["sources"], net.predict(data.sensors[:2]), rtol=1e-5,
                               atol=1e-6 * np.abs(layers[-1]["sources"]).max())


def test_prune_threshold_matches_classical(tiny):
    fwd, data = tiny
    ref = us.ClassicalCB(fwd, n_iter=5, prune_threshold=0.05).fit().predict(data.sensors[:3])
    net = us.UnfoldedSBLRegressor(fwd, n_layers=5, prune_threshold=0.05, max_epochs=0,
                                  dtype="float64").fit(data.sensors, data.sources)
    out = net.predict(data.sensors[:3])
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5


def test_bad_inputs(tiny):
    fwd, data = tiny
    net = us.UnfoldedSBLRegressor(fwd, n_layers=2, max_epochs=0).fit(data.sensors,
                                                                     data.sources)
    with pytest.raises(ValueError, match="X has 3 channels"):
        net.predict(np.ones((1, 3, 4)))
    bad = data.sensors[:1].copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="X contains NaN or infinite"):
        net.predict(bad)
    # tensors (batches simulated on a device) get the same checks where they lie
    sensors = torch.as_tensor(data.sensors[:2])
    with pytest.raises(ValueError, match="X has 3 channels"):
        net._normalise(torch.ones(1, 3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"X must have shape \(n_samples, \d+, n_times\)"):
        net._normalise(sensors[0])
    with pytest.raises(ValueError, match="X contains NaN or infinite"):
        net._normalise(sensors * float("nan"))
    with pytest.raises(ValueError, match="at least one sample"):
        net._normalise(sensors[:0])
    with pytest.raises(ValueError, match=r"y must have shape \(24, 60, 20\)"):
        us.UnfoldedSBLRegressor(fwd, max_epochs=0).fit(data.sensors, data.sources[:, :5])
    with pytest.raises(ValueError, match="correction must be one of"):
        us.UnfoldedSBLRegressor(fwd, correction="transformer").fit(data.sensors, data.sources)
    with pytest.raises(ValueError, match="learn_noise=False needs noise_var"):
        us.UnfoldedSBLRegressor(fwd, learn_noise=False, max_epochs=0).fit(
            data.sensors, data.sources)
    with pytest.raises(ValueError, match="all-zero"):
        us.UnfoldedSBLRegressor(fwd, max_epochs=0).fit(np.zeros_like(data.sensors),
                                                       data.sources)
    zero = net.predict(np.zeros((1, 16, 4)))
    assert np.all(zero == 0)


def test_sklearn_conventions_and_gridsearch(tiny):
    from sklearn.model_selection import GridSearchCV, KFold

    fwd, data = tiny
    net = us.UnfoldedSBLRegressor(fwd, n_layers=3, max_epochs=1, steps_per_epoch=1,
                                  progressive_steps=0, batch_size=4, n_val=0)
    assert clone(net).get_params()["n_layers"] == 3
    search = GridSearchCV(net, {"n_layers": [2, 3], "correction": ["bias", "mlp"]},
                          cv=KFold(2), scoring={"f1": us.f1_scorer, "emd": us.emd_scorer},
                          refit="f1", error_score="raise")
    search.fit(data.sensors, data.sources)
    assert search.best_estimator_.predict(data.sensors[:1]).shape == (1, 60, 20)


@pytest.mark.parametrize("correction", ["mlp", "attention"])
def test_widened_corrections_compute_the_same_function_and_learn(tiny, tmp_path, correction):
    """``widen_corrections``: a trained network with more hidden units starts exactly
    where the narrow one is, its new units get gradient, and the width survives
    save/load."""
    from unfolded_sbl.network import widen_corrections

    fwd, data = tiny
    net = us.UnfoldedSBLRegressor(fwd, correction=correction, n_layers=3, max_epochs=1,
                                  steps_per_epoch=2, progressive_steps=1, batch_size=4,
                                  n_val=0, random_state=0).fit(data.sensors, data.sources)
    wide = clone(net).set_params(correction_units=48, max_epochs=0)
    wide.fit(data.sensors, data.sources)
    state = widen_corrections(net.network_.state_dict(), 48)
    wide.network_.load_state_dict(state)
    out, ref = wide.predict(data.sensors[:4]), net.predict(data.sensors[:4])
    # wider products sum in another order: float64 round-off (1e-16) differs and the
    # layers' N x N solves amplify it by their conditioning; a widening that changed
    # the function would differ by O(1e-2) or more
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-7
    hidden = wide.network_.source_corrections[0]
    hidden = (hidden.mlp if correction == "attention" else hidden).hidden
    assert hidden.weight.shape[0] == 48 and hidden.weight[32:].abs().sum() > 0
    Y = torch.as_tensor(data.sensors[:4] / data.sensors[:4].std())
    lead_field = torch.as_tensor(net.lead_field_)
    wide.network_(Y, lead_field)["sources"].square().sum().backward()
    out_weight = (wide.network_.source_corrections[0].mlp if correction == "attention"
                  else wide.network_.source_corrections[0]).out.weight
    assert out_weight.grad[:, 32:].abs().sum() > 0  # the new units can learn
    wide.save(tmp_path / "wide.pt")
    back = us.UnfoldedSBLRegressor.load(tmp_path / "wide.pt", forward=fwd)
    assert back.correction_units == 48
    np.testing.assert_array_equal(back.predict(data.sensors[:4]), out)
    with pytest.raises(ValueError, match="correction_units"):
        clone(net).set_params(correction_units=0).fit(data.sensors, data.sources)


def test_mixture_focus_draws_the_worst_component_more_often(tiny):
    """``mixture_focus``: component probabilities ~ exp(focus * validation ratio), to the
    starting network's ratios under ``select_best="relative"``; even draws at 0."""
    from unfolded_sbl.training import Trainer, TrainSettings

    def trainer(**settings):
        return Trainer(None, None, None, None, TrainSettings(**settings), random_state=0)

    record = {"val_ratio": 1.05, "val_ratio_parts": [1.0, 1.1]}
    assert trainer().mixture_weights(record) is None
    weights = trainer(mixture_focus=10.0).mixture_weights(record)
    np.testing.assert_allclose(weights, np.exp([-1.0, 0.0]) / np.exp([-1.0, 0.0]).sum())
    relative = trainer(mixture_focus=10.0, select_best="relative")
    relative.state["start_validation"] = {"val_ratio": 1.1, "val_ratio_parts": [0.9, 1.2]}
    low, high = relative.mixture_weights(record)  # 1.0 / 0.9 > 1.1 / 1.2
    assert low > high and abs(low + high - 1) < 1e-12

    fwd, _ = tiny
    components = [{"n_patches": (1, 2), "n_times": 20}, {"n_patches": (3, 4), "n_times": 20}]
    net = us.UnfoldedSBLRegressor(fwd, n_layers=3, max_epochs=2, steps_per_epoch=2,
                                  progressive_steps=0, batch_size=4, n_val=8, random_state=0,
                                  simulator_params=components, mixture_focus=5.0)
    net.fit_simulated()
    for record in net.history_:
        assert len(record["mixture_weights"]) == 2
        assert abs(sum(record["mixture_weights"]) - 1) < 1e-3
    with pytest.raises(ValueError, match="mixture_focus"):
        clone(net).set_params(mixture_focus=-1.0).fit_simulated()


def _briefly_trained(fwd, data):
    """A float64 MLP model with non-zero corrections (one short epoch)."""
    return us.UnfoldedSBLRegressor(fwd, correction="mlp", n_layers=3, max_epochs=1,
                                   steps_per_epoch=2, progressive_steps=1, batch_size=4,
                                   n_val=0, random_state=0, dtype="float64").fit(
        data.sensors, data.sources)


def test_inference_on_the_row_space_equals_inference_on_the_data(tiny, tmp_path, monkeypatch):
    """With T > N the networks run on the data's row space (torch and onnxruntime);
    the estimates, the per-layer ones included, are those of the full data."""
    fwd, data = tiny
    assert data.sensors.shape[2] > data.sensors.shape[1]
    net = _briefly_trained(fwd, data)
    path = tmp_path / "m.onnx"
    us.export_onnx(net, path)
    graph = us.OnnxSBLRegressor(path, forward=fwd).fit()
    X = data.sensors[:5]
    compressed = [net.predict(X), graph.predict(X),
                  *(layer["sources"] for layer in net.predict_trajectory(X))]
    assert np.abs(compressed[0]).max() > 0
    monkeypatch.setattr(us._network_base._NetworkEstimator, "_on_row_space",
                        staticmethod(lambda Y: (Y, lambda sources, rows=None: sources)))
    full = [net.predict(X), graph.predict(X),
            *(layer["sources"] for layer in net.predict_trajectory(X))]
    for a, b in zip(compressed, full):
        assert a.shape == b.shape == X.shape[:1] + (fwd.n_sources, X.shape[2])
        # (float32 corrections: round-off of the solver may move a feature by an ulp)
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-6


def test_regime_check_reads_the_row_space_and_mixed_batches_split_cleanly(tiny, tmp_path):
    """The regime check runs on the row space (same levels as on the data), and a
    batch mixing noise-free samples (left to the classical updates) with noisy ones
    gives each sample the estimate it gets alone, in torch and onnxruntime."""
    from unfolded_sbl.regime import REGIME_FLOOR_DB, regime_level_db

    fwd, data = tiny
    net = _briefly_trained(fwd, data)
    path = tmp_path / "m.onnx"
    us.export_onnx(net, path)
    # parts of 3 samples: the graph's parts of the corrected samples are mapped back
    # into place
    graph = us.OnnxSBLRegressor(path, forward=fwd, batch_size=3).fit()
    noise_free = np.einsum("cs,nst->nct", fwd.lead_field, data.sources[:2])
    X = np.concatenate([data.sensors[:2], noise_free, data.sensors[2:4]])
    Y, _ = net._prepare(X)
    rows, _ = net._on_row_space(Y)
    assert rows.shape == Y.shape[:2] + (Y.shape[1],)
    on_rows, on_data = regime_level_db(rows), regime_level_db(Y)
    noisy = on_data > -80  # noise-free levels sit at the ridge (about -100 dB)
    np.testing.assert_allclose(on_rows[noisy], on_data[noisy], atol=1e-6)
    assert np.all(np.maximum(on_rows, on_data)[~noisy] < REGIME_FLOOR_DB)
    for est in (net, graph):
        together = est.predict(X)
        np.testing.assert_array_equal(est.classical_fallback_, [0, 0, 1, 1, 0, 0])
        alone = np.concatenate([est.predict(X[i:i + 1]) for i in range(len(X))])
        assert np.linalg.norm(together - alone) / np.linalg.norm(alone) < 1e-6
    # per-layer states too: the classical part has no corrections, the other has
    layer0 = net.predict_trajectory(X)[0]
    assert np.all(layer0["source_correction"][2:4] == 0)
    assert np.any(layer0["source_correction"][[0, 1, 4, 5]] != 0)
    first_alone = net.predict_trajectory(X[:1])[0]
    np.testing.assert_allclose(layer0["source_correction"][:1], first_alone["source_correction"],
                               rtol=1e-6, atol=1e-12)


def test_predict_runs_the_network_in_chunks_with_the_same_result(tiny, monkeypatch):
    fwd, data = tiny
    net = _briefly_trained(fwd, data)
    X = data.sensors[:11]
    whole, layers = net.predict(X), net.predict_trajectory(X)
    whole_var = net.source_var_
    monkeypatch.setattr(us.unfolded, "PREDICT_BATCH_SIZE", 4)  # chunks of 4, 4 and 3
    np.testing.assert_allclose(net.predict(X), whole, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(net.source_var_, whole_var, rtol=1e-10, atol=1e-20)
    for a, b in zip(net.predict_trajectory(X), layers):
        np.testing.assert_allclose(a["sources"], b["sources"], rtol=1e-10, atol=1e-14)


def test_float64_networks_run_their_corrections_in_float32(tiny, tmp_path):
    fwd, data = tiny
    net = _briefly_trained(fwd, data)

    def dtypes(estimator):
        network = estimator.network_
        corrections = [*network.source_corrections.parameters(),
                       *network.noise_corrections.parameters()]
        assert corrections
        return {p.dtype for p in corrections}

    assert dtypes(net) == {torch.float32}
    net.save(tmp_path / "m.pt")
    back = us.UnfoldedSBLRegressor.load(tmp_path / "m.pt", forward=fwd)
    assert dtypes(back) == {torch.float32} and back.torch_dtype_ == torch.float64
    np.testing.assert_array_equal(back.predict(data.sensors[:3]), net.predict(data.sensors[:3]))
    net.set_params(warm_start=True, max_epochs=1).fit(data.sensors, data.sources)
    assert dtypes(net) == {torch.float32}
