"""The paper benchmark runs end to end at a tiny budget (keeps it from rotting)."""

import json

import numpy as np
import pytest

paper = pytest.importorskip("benchmarks.paper")


def test_paper_benchmark_tiny(tmp_path):
    payload = paper.main(["--budget", "tiny", "--out", str(tmp_path), "--quiet"])
    report = (tmp_path / "RESULTS.md").read_text()
    for setting in paper.SETTINGS:
        assert setting.title in report
        rows = payload["results"][setting.key]
        # classical baselines everywhere, learned models with one row per seed
        assert {"sLORETA", "ClassicalCB known", "ClassicalCB joint"} <= set(rows)
        assert len(rows["Deep CB joint"]) == len(paper.BUDGETS["tiny"].seeds)
        for method, per_seed in rows.items():
            for metrics in per_seed:
                # sLORETA's standardised map has no current units: rMSE n/a (NaN)
                scored = [m for m in paper.METRICS if not (method == "sLORETA" and m == "rmse")]
                assert np.isfinite([metrics[m] for m in scored]).all()
                assert 0 <= metrics["f1"] <= 1
        assert np.isnan(rows["sLORETA"][0]["rmse"])
    # models tied to the training cap are reported as skipped, not silently dropped
    assert "DeepSIF-like (end-to-end)" in payload["skipped"]["things_ico4"]
    assert "DeepSIF-like (end-to-end)" in payload["results"]["train"]
    # paper numbers sit beside ours
    assert "| 0.434 |" in report
    for name in ("paper_layers", "paper_snr_sources", "paper_extent", "paper_corrections",
                 "paper_cortex"):
        png = tmp_path / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{name}.png" in report
    saved = json.loads((tmp_path / "results" / "paper.json").read_text())
    assert saved["budget"] == "tiny" and saved["speed"]["flops_per_sample"] > 0
    # a second run reuses the cached models instead of training again
    cached = paper.train_models(paper.BUDGETS["tiny"], tmp_path / "_work" / "tiny",
                                verbose=False)[0]
    assert cached["Deep CB joint"][0][0] == "file"


@pytest.mark.parametrize("budget", ["small", "full"])
def test_budgets_are_valid_estimator_parameters(budget):
    """Every budget builds valid estimators (the full one is too long to run in tests)."""
    import unfolded_sbl as us

    for method, (kind, params) in paper.LEARNED.items():
        train = paper._budget_params(kind, method, budget)
        if kind == "end_to_end":
            est = us.EndToEndRegressor("biosemi64-ico3", **params, **train)
            est._build()
        else:
            est = us.UnfoldedSBLRegressor("biosemi64-ico3", **params, **train)
            est._check_params()
        if budget == "full" and method in paper.SHIPPED:
            preset = us.zoo.PRESETS[paper.SHIPPED[method]]
            assert {k: v for k, v in preset.items() if k in train} == train
