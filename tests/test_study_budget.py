"""The budget benchmark's evaluation and table."""

import json

import numpy as np

import unfolded_sbl as us
from benchmarks.studies import budget
from benchmarks.studies.budget import HELD_OUT, evaluate, feasible, table


def test_the_reference_against_itself_is_ratio_one_and_no_f1_change(fwd):
    classical = us.ClassicalCB(forward=fwd, n_iter=5).fit()
    data = us.simulate(fwd, 3, random_state=0, n_times=20)
    sets = {"a": (data, classical.predict(data.sensors))}
    assert evaluate(classical, sets) == {"a": [1.0, 0.0]}
    # an estimate twice as far from the truth everywhere has four times its rMSE
    worse = type("Worse", (), {"predict": lambda self, X: 2 * sets["a"][1] - data.sources})()
    assert np.isclose(evaluate(worse, sets)["a"][0], 4.0, rtol=1e-3)


def test_table_starts_at_the_shipped_model_and_reports_the_best_trained_chunk():
    records = [{"chunk": c, "samples": 960 * (c + 1), "seconds": 45.0 * (c + 1),
                **{k: [1.0 - 0.01 * (c + 1) * (k == "nominal"), 0.0] for k in HELD_OUT}}
               for c in range(-1, 9)]
    records[0]["perturbed"] = [0.5, 0.0]  # the shipped model is not a trained chunk
    lines = table(records).splitlines()
    assert lines[2].startswith("| 0 (shipped) |")
    assert lines[3].startswith("| 960 |")  # the first chunk
    assert lines[-1].split("|")[3].strip() == f"{0.91:.3f}"  # nominal, the last chunk's
    # the shipped model's better perturbed ratio is not the trained chunks' best
    assert lines[-1].split("|")[4].strip() == f"{1.0:.3f}"
    assert len(lines) == 2 + 6 + 1


class _StubNetwork:
    """What continue_run needs of a network: its history grows by one entry per epoch."""

    def __init__(self, n_history):
        self.history_ = [{}] * n_history

    def set_params(self, **params):
        return self

    def fit_simulated(self):
        self.history_ = self.history_ + [{}] * budget.EPOCHS_PER_CHUNK
        return self

    def save(self, path):
        path.write_text("network")


def _log(work, records):
    (work / "paper.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_complete_log_needs_no_network_and_trains_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "WORK", tmp_path)
    records = [{"chunk": c, "samples": 0, "seconds": 0.0, "history": 16}
               for c in range(-1, 3)]
    _log(tmp_path, records)
    # no network file, and neither loading nor the held-out sets are reached
    assert budget.continue_run("paper", 3, sets=None, verbose=False) == records
    assert budget.continue_run("paper", 2, sets=None, verbose=False) == records[:3]


def test_resuming_drops_a_logged_chunk_the_saved_network_does_not_hold(tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(budget, "WORK", tmp_path)
    # three chunks logged, but the network was saved after two (16 shipped epochs + 2 x 2)
    stub = _StubNetwork(16 + 2 * budget.EPOCHS_PER_CHUNK)
    monkeypatch.setattr(budget.us.UnfoldedSBLRegressor, "load", lambda *a, **k: stub)
    _log(tmp_path, [{"chunk": c, "samples": 1280 * (c + 1), "seconds": 1.0 * (c + 1),
                     "history": 16, "stale": True} for c in range(-1, 3)])
    (tmp_path / "paper.pt").write_text("network")
    records = budget.continue_run("paper", 4, sets=dict, verbose=False)
    assert [r["chunk"] for r in records] == [-1, 0, 1, 2, 3]
    assert "stale" not in records[3]  # chunk 2 was trained again, not kept from the log
    assert records[-1]["samples"] == 4 * 1280
    logged = [json.loads(line) for line in (tmp_path / "paper.jsonl").read_text().splitlines()]
    assert logged == records
    assert len(stub.history_) == 16 + 4 * budget.EPOCHS_PER_CHUNK


def test_feasible_counts_the_chunks_that_lose_nowhere():
    def record(chunk, nominal, worst):
        return {"chunk": chunk, "samples": 100 * (chunk + 1),
                **{k: [worst, 0.0] for k in HELD_OUT}, "nominal": [nominal, 0.0]}

    records = [record(-1, 0.9, 0.99), record(0, 0.7, 1.01), record(1, 0.85, 1.0),
               record(2, 0.8, 0.95)]
    assert feasible(records) == ("Chunks with every condition <= 1.00: 2 of 3; the best "
                                 "nominal ratio among them 0.800 (perturbed 0.950, after "
                                 "300 samples).")
    assert feasible(records[:2]) == "Chunks with every condition <= 1.00: 0 of 1."


def test_gpu_budget_dry_run_trains_a_chunk_scores_it_and_resumes(tmp_path, capsys):
    """The prepared GPU run (benchmarks.studies.gpu_budget) on the CPU with tiny sizes:
    one chunk trained and scored, samples per second printed; a second call resumes
    after the logged chunk instead of starting again."""
    from benchmarks.studies import gpu_budget

    records = gpu_budget.main(["--dry-run", "--recipe", "paper"])
    out = capsys.readouterr().out
    assert "samples/s" in out and "| 0 (shipped) |" in out
    assert [r["chunk"] for r in records] == [-1, 0] and records[1]["samples"] == 2

    def _tiny_sets():
        import unfolded_sbl as us

        fwd = us.load_forward()
        data = us.simulate(fwd, 2, random_state=1)
        reference = us.ClassicalCB(fwd).fit().predict(data.sensors)
        return {label: (data, reference) for label in HELD_OUT}

    first = gpu_budget.train("paper", 0.0, "cpu", 2, 1, 1, _tiny_sets, work=tmp_path,
                             verbose=False)
    again = gpu_budget.train("paper", 0.0, "cpu", 2, 1, 1, _tiny_sets, work=tmp_path,
                             verbose=False)
    assert [r["chunk"] for r in first] == [-1, 0]
    assert [r["chunk"] for r in again] == [-1, 0, 1] and again[2]["samples"] == 4
