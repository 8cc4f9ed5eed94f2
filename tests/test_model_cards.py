"""Model cards: export, validation and file records of a (tiny, untrained) model."""

import json

import numpy as np
import pytest

import unfolded_sbl as us
from unfolded_sbl import zoo


def test_write_card_exports_validates_and_records_the_files(tmp_path):
    est = us.UnfoldedSBLRegressor(forward=zoo.TRAIN_FORWARD, n_layers=3,
                                  max_epochs=0).fit_simulated()
    est.save(tmp_path / "tiny.pt")
    params = {"correction": "mlp", "learn_noise": True}
    card = zoo.write_card("tiny", tmp_path, stages=[], params=params, n_eval=4)

    on_disk = json.loads((tmp_path / "tiny.json").read_text())
    assert on_disk["files"] == card["files"]
    for fname, record in card["files"].items():
        assert record["sha256"] == zoo.sha256(tmp_path / fname)
    metrics = card["validation"]["metrics"]
    # untrained: the network is the classical solver at the same depth (25 iterations
    # for the reference, 3 layers here, so only the keys and finiteness are checked)
    assert set(metrics) == {"ClassicalCB (learn), 25 it.", "ClassicalCB (learn), 100 it.",
                            "tiny"}
    assert all(np.isfinite(m["rmse"]) for m in metrics.values())

    # the exported graph is the saved network, in the shipped graphs' precision
    assert card["onnx_dtype"] == zoo.ONNX_DTYPE
    data = us.simulate(zoo.TRAIN_FORWARD, 2, random_state=0)
    onnx = us.OnnxSBLRegressor(tmp_path / "tiny.onnx", forward=zoo.TRAIN_FORWARD).fit()
    assert onnx.solver_dtype_ == np.dtype(zoo.ONNX_DTYPE)
    ref = us.UnfoldedSBLRegressor.load(tmp_path / "tiny.pt", forward=zoo.TRAIN_FORWARD,
                                       dtype=zoo.ONNX_DTYPE).predict(data.sensors)
    np.testing.assert_allclose(onnx.predict(data.sensors), ref, rtol=1e-4,
                               atol=1e-5 * np.abs(ref).max())

    # refresh_export rewrites the graph and keeps the hashes true
    (tmp_path / "tiny.onnx").write_bytes(b"stale")
    refreshed = zoo.refresh_export("tiny", tmp_path)
    assert refreshed["files"]["tiny.onnx"]["sha256"] == zoo.sha256(tmp_path / "tiny.onnx")
    assert refreshed["validation"] == card["validation"]


def _with_random_corrections(est, seed=0):
    """``est`` with random output layers, so that every correction is non-zero."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for modules in (est.network_.source_corrections, est.network_.noise_corrections):
            for module in modules:
                if hasattr(module, "out"):
                    module.out.weight.copy_(0.3 * torch.randn(module.out.weight.shape,
                                                              generator=gen))
                    module.out.bias.fill_(0.1)
    return est


def test_without_noise_corrections_equals_zero_noise_corrections(tmp_path):
    import torch

    est = _with_random_corrections(us.UnfoldedSBLRegressor(
        forward=zoo.TRAIN_FORWARD, n_layers=3, max_epochs=0).fit_simulated())
    data = us.simulate(zoo.TRAIN_FORWARD, 3, random_state=1, n_times=30)
    before = est.predict(data.sensors)
    plain = zoo.without_noise_corrections(est)
    assert plain.noise_correction == "none" and est.noise_correction == "mlp"
    np.testing.assert_array_equal(est.predict(data.sensors), before)  # est unchanged
    layers = plain.predict_trajectory(data.sensors)
    assert all(layer["noise_correction"] is None for layer in layers)
    assert any(layer["source_correction"] is not None and np.abs(
        layer["source_correction"]).max() > 0 for layer in layers)
    with torch.no_grad():
        for module in est.network_.noise_corrections:
            if hasattr(module, "out"):
                module.out.weight.zero_()
                module.out.bias.zero_()
    expected = est.predict(data.sensors)
    # the noise corrections did act
    assert np.abs(expected - before).max() > 1e-3 * np.abs(before).max()
    np.testing.assert_allclose(plain.predict(data.sensors), expected, rtol=1e-10,
                               atol=1e-12 * np.abs(expected).max())
    # saved, loaded and exported, it is the same function
    plain.save(tmp_path / "plain.pt")
    loaded = us.UnfoldedSBLRegressor.load(tmp_path / "plain.pt", forward=zoo.TRAIN_FORWARD)
    np.testing.assert_allclose(loaded.predict(data.sensors), expected, rtol=1e-10,
                               atol=1e-12 * np.abs(expected).max())
    us.export_onnx(plain, tmp_path / "plain.onnx")
    onnx = us.OnnxSBLRegressor(tmp_path / "plain.onnx", forward=zoo.TRAIN_FORWARD).fit()
    np.testing.assert_allclose(onnx.predict(data.sensors), expected, rtol=1e-5,
                               atol=1e-6 * np.abs(expected).max())
    with pytest.raises(ValueError, match="no noise corrections"):
        zoo.without_noise_corrections(plain)


def test_derive_writes_deep_cb_without_its_noise_corrections(tmp_path):
    name = "deep-cb-joint-classical-noise"
    card = zoo.derive(name, tmp_path, n_eval=2)
    source = zoo.model_card(zoo.DERIVED[name])
    assert card["estimator_params"]["noise_correction"] == "none"
    assert card["training"]["samples_seen"] == source["training"]["samples_seen"]
    assert card["training"]["stages"][-1]["samples_seen"] == 0
    assert source["files"][f"{zoo.DERIVED[name]}.pt"]["sha256"] in (
        card["training"]["stages"][-1]["source"])
    for fname, record in card["files"].items():
        assert record["sha256"] == zoo.sha256(tmp_path / fname)
    data = us.simulate(zoo.TRAIN_FORWARD, 2, random_state=3)
    derived = us.UnfoldedSBLRegressor.load(tmp_path / f"{name}.pt", forward=zoo.TRAIN_FORWARD)
    expected = zoo.without_noise_corrections(
        us.load_pretrained(zoo.DERIVED[name])).predict(data.sensors)
    np.testing.assert_allclose(derived.predict(data.sensors), expected, rtol=1e-10,
                               atol=1e-12 * np.abs(expected).max())
    with pytest.raises(ValueError, match="unknown derived model"):
        zoo.derive("deep-cb-joint", tmp_path)


def test_card_summaries_come_from_the_robustness_results():
    """Each shipped card's summary is :func:`zoo.robustness_summary` of the committed
    robustness results: a loss is every condition above 1.005, the median is over
    the conditions where the corrections act."""
    import json
    from pathlib import Path

    from unfolded_sbl import zoo

    results = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results"
                          / "robustness.json").read_text())
    for row in us.list_pretrained(details=True):
        summary = zoo.robustness_summary(row["name"], results)
        assert row["loses"] == summary["loses"] and row["median_ratio"] == summary["median_ratio"]
    fake = {"n_samples": 8, "rows": {
        "nominal template": {"cells": {"m": {"ratio": 0.9}}},
        "perturbed template": {"cells": {"m": {"ratio": 1.0}}},
        "wide": {"cells": {"m": {"ratio": 1.2}}}}}
    zoo.MODEL_PRIORS["m"] = "focal"
    try:
        summary = zoo.robustness_summary("m", fake)
    finally:
        del zoo.MODEL_PRIORS["m"]
    assert summary["loses"] == {"wide": 1.2} and summary["median_ratio"] == 1.05


def test_focal_model_card_records_its_prior_and_where_it_loses():
    """The paper-distribution model ships with the stages that made it and a summary
    that names its losses: wide patches, where the focal prior does not hold."""
    card = zoo.model_card("deep-cb-joint-focal")
    stages = [st["name"] for st in card["training"]["stages"]]
    assert stages[-1] == "paper (focal)" and stages[0].startswith("deep-cb-joint: ")
    assert "benchmarks.studies.budget --runs paper" in card["training"]["stages"][-1]["command"]
    summary = card["summary"]
    assert summary["prior"] == zoo.PRIORS["focal"]
    assert summary["nominal"] < us.list_pretrained(details=True)[1]["nominal"]  # deep-cb-joint
    assert any(k.startswith("spread") for k in summary["loses"])
