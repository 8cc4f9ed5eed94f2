"""Model cards: export, validation and file records of a (tiny, untrained) model."""

import json

import numpy as np

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

    # the exported graph is the saved network
    data = us.simulate(zoo.TRAIN_FORWARD, 2, random_state=0)
    onnx = us.OnnxSBLRegressor(tmp_path / "tiny.onnx", forward=zoo.TRAIN_FORWARD).fit()
    np.testing.assert_allclose(onnx.predict(data.sensors), est.predict(data.sensors),
                               rtol=1e-5, atol=1e-6 * np.abs(est.predict(data.sensors)).max())

    # refresh_export rewrites the graph and keeps the hashes true
    (tmp_path / "tiny.onnx").write_bytes(b"stale")
    refreshed = zoo.refresh_export("tiny", tmp_path)
    assert refreshed["files"]["tiny.onnx"]["sha256"] == zoo.sha256(tmp_path / "tiny.onnx")
    assert refreshed["validation"] == card["validation"]
