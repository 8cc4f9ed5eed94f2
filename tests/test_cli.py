import numpy as np
import pytest

import unfolded_sbl as us
from unfolded_sbl import cli
from unfolded_sbl.cli import main


def test_forward_list_and_info(capsys):
    assert main(["forward", "list"]) == 0
    out = capsys.readouterr().out
    assert "biosemi64-ico3" in out and "5124 sources" in out
    assert main(["forward", "info", "things63-ico3"]) == 0
    assert "Fp1" in capsys.readouterr().out


def test_simulate_writes_dataset(tmp_path, capsys):
    out = tmp_path / "sim.npz"
    assert main(["simulate", str(out), "--n-samples", "3", "--seed", "1"]) == 0
    data = us.SimulatedData.load(out)
    assert data.sensors.shape == (3, 64, 100)
    again = us.simulate("biosemi64-ico3", 3, random_state=1)
    np.testing.assert_allclose(data.sensors, again.sensors, rtol=1e-6)


def test_demo_prints_metric_table(demo_run):
    code, out, _ = demo_run
    assert code == 0
    for word in ("sLORETA", "ClassicalCB (joint noise)", "deep-cb-joint", "rel_sq_err", "emd"):
        assert word in out
    # sLORETA's standardised output has no current units: no squared error in A m
    sloreta = next(line for line in out.splitlines() if line.startswith("sLORETA"))
    assert sloreta.split()[1] == "n/a"
    classical = next(line for line in out.splitlines() if line.startswith("ClassicalCB (j"))
    assert float(classical.split()[3]) < 10
    assert "relative squared error" in out


def test_clear_error_exit_code(capsys):
    assert main(["forward", "info", "nope"]) == 2
    assert "unknown forward model" in capsys.readouterr().err


def test_help_is_plain_text_and_every_option_is_described():
    import argparse

    from unfolded_sbl import zoo

    maintainers = zoo.build_parser()
    assert "``" not in maintainers.format_help()
    assert all(a.help for a in maintainers._actions)

    parser = cli.build_parser()
    text = parser.format_help()
    assert "``" not in text and "examples:" in text
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    stack = list(subparsers.choices.items())
    while stack:
        name, sub = stack.pop()
        assert "``" not in sub.format_help()
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.items())
            elif not isinstance(action, argparse._HelpAction):
                assert action.help, f"{name}: {action.dest} has no help text"


def _record_training(monkeypatch, function):
    """Replace ``zoo.<function>`` by a stub that records its calls (name, kwargs)."""
    from unfolded_sbl import zoo

    calls = []

    def fake_train(name, **kwargs):
        calls.append((name, kwargs))
        return {"validation": {"metrics": {"m": {"rmse": 1.0}}}}

    monkeypatch.setattr(zoo, function, fake_train)
    return calls


def test_train_passes_units_focus_and_continuation(monkeypatch):
    from unfolded_sbl import zoo

    calls = _record_training(monkeypatch, "train_pretrained")
    assert zoo.main(["deep-cb-joint", "--continue", "--wide", "--epochs", "3",
                 "--units", "64", "--focus", "20", "--out", "somewhere"]) == 0
    name, kwargs = calls[-1]
    assert name == "deep-cb-joint" and kwargs["continue_training"] and kwargs["wide"]
    assert kwargs["init"] == zoo.MODEL_DIR / "deep-cb-joint.pt"
    assert kwargs["overrides"] == {"correction_units": 64}
    assert kwargs["robust_overrides"] == {"max_epochs": 3, "mixture_focus": 20.0}
    zoo.main(["deep-cb-joint", "--out", "somewhere"])
    assert calls[-1][1]["overrides"] is None and calls[-1][1]["robust_overrides"] is None


def test_train_passes_a_model_file_and_the_noise_correction(monkeypatch):
    from unfolded_sbl import zoo

    calls = _record_training(monkeypatch, "train_pretrained")
    assert zoo.main(["deep-cb-joint", "--init", "run/deep-cb-joint.pt", "--low-snr",
                 "--noise-correction", "none", "--out", "somewhere"]) == 0
    name, kwargs = calls[-1]
    assert kwargs["init"] == "run/deep-cb-joint.pt" and kwargs["low_snr"]
    assert kwargs["overrides"] == {"noise_correction": "none"}
    assert not kwargs["continue_training"]


def test_a_stage_cannot_change_the_noise_correction_of_its_start():
    from unfolded_sbl import zoo

    params = {**zoo.PRESETS["deep-cb-joint"], "noise_correction": "none"}
    with pytest.raises(ValueError, match="noise_correction='none'.*'mlp'"):
        zoo._start_from(zoo.pretrained_path("deep-cb-joint"), params)


def test_train_of_a_denser_model_runs_its_own_stage(monkeypatch):
    from unfolded_sbl import zoo

    calls = _record_training(monkeypatch, "train_denser")
    monkeypatch.setattr(zoo, "train_pretrained", lambda *a, **k: pytest.fail("preset path"))
    assert zoo.main(["deep-graph-cb-joint-ico4", "--seed", "2", "--out", "somewhere"]) == 0
    name, kwargs = calls[-1]
    assert name == "deep-graph-cb-joint-ico4"
    assert kwargs["random_state"] == 2 and str(kwargs["out_dir"]) == "somewhere"
    assert kwargs["continue_training"] is False
    assert zoo.main(["deep-graph-cb-joint-ico4", "--continue"]) == 0
    assert calls[-1][1]["continue_training"] is True


def test_users_train_corrections_for_their_forward_model_with_a_card(tmp_path, capsys,
                                                                     monkeypatch):
    """``unfolded-sbl train``: a plain budget, a model file and its card; the same
    command resumes from its checkpoint instead of training again."""
    import json

    out = tmp_path / "my-model.pt"
    args = ["train", "--forward", "biosemi64-ico3", "--samples", "80", "--layers", "2",
            "--batch-size", "4", "--n-eval", "4", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "ClassicalCB (learn), 2 it." in printed and "my-model.json" in printed
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["training"]["forward"] == "biosemi64-ico3"
    assert card["training"]["samples_seen"] >= 80
    assert card["estimator_params"]["correction"] == "mlp"
    assert set(card["validation"]["metrics"]) == {"ClassicalCB (learn), 2 it.", "model"}
    from unfolded_sbl.pretrained import sha256

    assert card["files"]["my-model.pt"]["sha256"] == sha256(out)
    net = us.UnfoldedSBLRegressor.load(out)
    assert net.n_layers == 2 and net.correction == "mlp"
    weights = {k: v.clone() for k, v in net.network_.state_dict().items()}
    assert out.with_suffix(".ckpt").exists()
    import torch

    def no_step(*args, **kwargs):
        raise AssertionError("a resumed, finished run takes no step")

    monkeypatch.setattr(torch.optim.Adam, "step", no_step)
    assert main(args) == 0  # resumes: the checkpoint holds the finished run
    again = us.UnfoldedSBLRegressor.load(out).network_.state_dict()
    assert all(np.array_equal(weights[k], again[k]) for k in weights)


def test_train_rejects_unknown_forward_models_and_budgets(tmp_path, capsys):
    assert main(["train", "--forward", "no-such-cap", "--out", str(tmp_path / "m.pt")]) == 2
    assert "neither a shipped template" in capsys.readouterr().err
    assert main(["train", "--forward", "biosemi64-ico3", "--samples", "3", "--out",
                 str(tmp_path / "m.pt")]) == 2
    assert "n_samples must be an integer >= batch_size" in capsys.readouterr().err
    assert main(["train", "--forward", "biosemi64-ico3", "--out", str(tmp_path / "m")]) == 2
    assert "out must be a .pt file" in capsys.readouterr().err


def test_models_command_shows_each_models_prior_gain_and_losses(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for row in us.list_pretrained(details=True):
        assert row["name"] in out and row["prior"] in out
    assert "deep-cb-known" in out and "SNR 30 to 40 dB 1.33" in out  # a known loss
    # what each was trained for, and what answers otherwise
    assert out.count("supports: EEG in volts, fixed orientation") == len(us.list_pretrained())
