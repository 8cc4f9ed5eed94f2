"""Timing benchmarks take turns and report medians over rounds
(benchmarks/bench_classical.py, bench_simulator.py)."""

import numpy as np
import pytest

import unfolded_sbl as us
from benchmarks import bench_classical


def test_rounds_time_every_solver_and_keep_deterministic_estimates():
    fwd = us.load_forward()
    data = us.simulate(fwd, 3, random_state=0, n_times=20)
    estimates, seconds = bench_classical.timed_rounds(data, fwd, k=2, n_problems=3, n_iter=3,
                                                      tol=0.0, rounds=2)
    assert set(seconds) == {"mne", "f64", "f32", "b1"}
    assert all(len(t) == 2 and min(t) > 0 for t in seconds.values())
    assert estimates["mne"].shape == (2, fwd.n_sources, 20)
    assert estimates["f64"].shape == (3, fwd.n_sources, 20)
    # batch 1 and batch 64 are the same solver
    np.testing.assert_allclose(estimates["b1"], estimates["f64"][:2], rtol=1e-8, atol=1e-20)
    median, low, high = bench_classical.speedups(seconds, "f64")
    ratios = [m / t for m, t in zip(seconds["mne"], seconds["f64"])]
    assert low == min(ratios) and high == max(ratios) and low <= median <= high


def test_simulator_benchmark_reports_medians_over_rounds(capsys):
    from benchmarks import bench_simulator

    bench_simulator.main(["--n-samples", "2", "--rounds", "2", "--no-write"])
    lines = [line for line in capsys.readouterr().out.splitlines() if "samples/s" in line]
    assert len(lines) == 3
    for line in lines:  # "name T=...: median samples/s [lowest, highest]"
        median = float(line.split(":")[1].split()[0])
        low, high = (float(v) for v in line.split("[")[1].rstrip("]").split(","))
        assert low <= median <= high


def test_take_turns_interleaves_the_runs():
    from benchmarks._results import take_turns

    calls = []
    values = take_turns({name: (lambda name=name: calls.append(name) or len(calls))
                         for name in ("a", "b", "c")}, rounds=3)
    assert calls == ["a", "b", "c"] * 3  # one call each per round, in turn
    assert values == {"a": [1, 4, 7], "b": [2, 5, 8], "c": [3, 6, 9]}


def test_onnx_benchmark_medians_take_turns_after_a_warm_up():
    from benchmarks import bench_onnx

    class Recorder:
        def __init__(self, name, log):
            self.name, self.log = name, log

        def predict(self, X, **kwargs):
            self.log.append((self.name, len(X), kwargs.get("noise_var")))

    log = []
    X = np.zeros((4, 2, 3))
    timed = {"a": (Recorder("a", log), {}), "b": (Recorder("b", log), {"noise_var": 1})}
    medians = bench_onnx.median_per_sample(timed, X, rounds=2)
    assert [name for name, _, _ in log] == ["a", "b"] + ["a", "b"] * 2  # warm-up, 2 rounds
    assert all(n == 4 for _, n, _ in log) and log[1][2] == 1
    assert set(medians) == {"a", "b"} and all(t >= 0 for t in medians.values())


def test_onnx_speed_table_is_relative_to_deep_cb_on_the_same_forward_only():
    from benchmarks.bench_onnx import SPEED_HEADER, _speed_table

    row = {"classical_f32_ms": 5.0, "torch_ms": 10.0, "torch_f32_ms": 6.0, "onnx_ms": 8.0}
    ico3 = [{**row, "model": "deep-cb-joint", "batch": 64},
            {**row, "model": "deep-graph-cb-joint", "batch": 64, "torch_ms": 12.0}]
    lines = _speed_table(ico3).splitlines()
    assert lines[0] == ("| deep-cb-joint | 64 | 5.0 | 10.0 | 6.0 | 8.0 | 1.25 | 0.75 | 1.60 | "
                        "1.00 / 1.00 |")
    assert lines[1] == ("| deep-graph-cb-joint | 64 | 5.0 | 12.0 | 6.0 | 8.0 | 1.50 | 0.75 | "
                        "1.60 | 1.20 / 1.00 |")
    # the denser model's table has no deep-cb-joint timed beside it
    ico4 = [{**row, "model": "deep-graph-cb-joint-ico4", "batch": 64}]
    assert _speed_table(ico4).endswith("| 1.60 | - |")
    n_columns = lines[0].count("|") - 1
    assert SPEED_HEADER.count("|---") == n_columns
    assert SPEED_HEADER.splitlines()[0].count("|") == n_columns + 1


def test_precision_tables_report_parity_with_torch_float32_per_snr_bin():
    from benchmarks.bench_onnx import PRECISION_SNR_BINS, _precision_body, _relative

    assert _relative(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.0
    assert _relative(np.array([3.0, 4.0]), np.array([3.0, 0.0])) == \
        pytest.approx(4.0 / 3.0)
    cells = {f"{lo}-{hi} dB": {"float32": 0.9, "float64": 0.9, "difference": 1e-3,
                               "vs_torch_float32": 2e-5 * (i + 1),
                               "torch_float32_vs_float64": 1e-3}
             for i, (lo, hi) in enumerate(PRECISION_SNR_BINS)}
    body = _precision_body([{"model": "m", "classical_ms": 5.0, "float32_ms": 5.0,
                             "float64_ms": 7.0, **cells}], batch=64)
    parity = [line for line in body.splitlines() if line.startswith("| m |")][-1]
    assert parity == "| m | 2e-05 (1e-03) | 4e-05 (1e-03) | 6e-05 (1e-03) | 8e-05 (1e-03) |"
