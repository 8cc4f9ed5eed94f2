"""ClassicalCB versus MNE-Python's gamma_map (update_mode=2), same data, one run.

Both solve the same known-noise (gamma-only) problems: the data and lead field are
whitened by the true per-sensor noise so that MNE's scalar noise variance
(alpha = 1) is exact.  MNE's solver core (``_gamma_map_opt``, one problem at a
time) is timed without its wrapper's I/O; ClassicalCB solves the batch.

    python -m benchmarks.bench_classical [--n-problems 32] [--n-mne 8] [--rounds 3]
    python -m benchmarks.bench_classical --meg   # MEG and MEG+EEG, whitened

``--meg`` times the same pair on the whitened MEG and MEG+EEG problems of
:mod:`benchmarks.bench_meg` (mne-python's test recording's sensors, fsaverage
ico3), with the orientation fixed and free (three dipoles per location, one
variance: MNE's ``group_size=3``), and writes its own section.

MNE's time moves by up to 40 % between runs on a shared machine, so every solver is
timed ``--rounds`` times, the solvers taking turns within a round; the table shows
the median time and each speed-up is the median of the per-round ratios, with
their range.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np

import unfolded_sbl as us
from benchmarks._results import matmul_peak, take_turns, write_section
from unfolded_sbl.evaluation import format_table, score_sources


def _whiten(data, fwd, i):
    std = np.sqrt(data.noise_var[i])
    return data.sensors[i] / std[:, None], fwd.lead_field / std[:, None]


def run_mne(data, fwd, n_problems, n_iter, tol):
    from mne.inverse_sparse._gamma_map import _gamma_map_opt

    out = np.zeros((n_problems,) + data.sources.shape[1:])
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(n_problems):
            Y, L = _whiten(data, fwd, i)
            # average-referenced data: project the whitened problem the same way
            x, active = _gamma_map_opt(Y - Y.mean(0), L - L.mean(0), alpha=1.0, maxit=n_iter,
                                       tol=tol, update_mode=2, verbose=False)
            out[i, active] = x
    return out, (time.perf_counter() - start) / n_problems


def run_ours(data, fwd, n_problems, n_iter, tol, dtype="float64", batch_size=64,
             estimator=None):
    est = estimator or us.ClassicalCB(fwd, noise="known", n_iter=n_iter, tol=tol, dtype=dtype,
                                      batch_size=batch_size).fit()
    X = data.sensors[:n_problems]
    est.predict(X[:2], noise_var=data.noise_var[:2])  # warm-up (threads, allocator)
    start = time.perf_counter()
    out = est.predict(X, noise_var=data.noise_var[:n_problems])
    return out, (time.perf_counter() - start) / n_problems


def matrix_product_rate(data, fwd, n_iter=25, batch_size=64):
    """How close ClassicalCB is to this machine's matrix-multiply throughput: the
    FLOPs of its matrix products per sample (torch's FlopCounterMode; the N x N
    Cholesky factorisations are not counted) and, per dtype, the GFLOP/s its
    batch-64 solve achieves and a square GEMM of the same dtype achieves."""
    from torch.utils.flop_counter import FlopCounterMode

    X, noise = data.sensors[:batch_size], data.noise_var[:batch_size]
    out = {}
    for dtype in ("float64", "float32"):
        est = us.ClassicalCB(fwd, noise="known", n_iter=n_iter, dtype=dtype,
                             batch_size=batch_size).fit()
        with FlopCounterMode(display=False) as counter:
            est.predict(X[:8], noise_var=noise[:8])
        flops = counter.get_total_flops() / 8
        _, seconds = run_ours(data, None, batch_size, n_iter, 0.0, dtype=dtype,
                              batch_size=batch_size, estimator=est)
        gemm = matmul_peak(dtype=dtype)
        out[dtype] = {"gflop_per_sample": flops / 1e9, "gflops": flops / seconds / 1e9,
                      "gemm_gflops": gemm}
    return out


def metrics_row(true, est, fwd, ms):
    return {**score_sources(true, est, fwd), "ms_per_sample": ms}


def timed_rounds(data, fwd, k, n_problems, n_iter, tol, rounds):
    """Estimates (of the first round; every solver is deterministic) and per-round
    seconds per problem of MNE, ClassicalCB float64 / float32 at batch 64 and float64
    at batch 1, the four taking turns in each round."""
    runs = {"mne": lambda: run_mne(data, fwd, k, n_iter, tol),
            "f64": lambda: run_ours(data, fwd, n_problems, n_iter, tol),
            "f32": lambda: run_ours(data, fwd, n_problems, n_iter, tol, dtype="float32"),
            "b1": lambda: run_ours(data, fwd, k, n_iter, tol, batch_size=1)}
    results = take_turns(runs, rounds)
    estimates = {key: calls[0][0] for key, calls in results.items()}
    seconds = {key: [t for _, t in calls] for key, calls in results.items()}
    return estimates, seconds


def speedups(seconds, key):
    """Median and range of the per-round ratios MNE time / ``key`` time."""
    ratios = [m / t for m, t in zip(seconds["mne"], seconds[key])]
    return statistics.median(ratios), min(ratios), max(ratios)


def _ratio(speedup):
    median, low, high = speedup
    return f"x{median:.1f} [{low:.1f}, {high:.1f}]"


def meg_speed(n_problems, n_mne, n_iter, rounds):
    """Seconds per problem of MNE's ``_gamma_map_opt`` and of batched ClassicalCB on
    whitened MEG and MEG+EEG problems, fixed and free orientation, taking turns."""
    from mne.inverse_sparse._gamma_map import _gamma_map_opt

    from benchmarks.bench_meg import MODALITIES, simulate_tilted, whitened_forward
    from unfolded_sbl.forward import loose_model

    rows, payload = {}, {}
    for modality, kinds in MODALITIES.items():
        white = whitened_forward(kinds)
        data, _ = simulate_tilted(white, n_problems, 30.0, 5.0, random_state=0)
        noise, n_times = np.ones(data.shape[:2]), data.shape[-1]
        for orientation, loose, group in (("fixed", 0.0, 1), ("free", 1.0, 3)):
            model, _ = loose_model(white, loose)
            est = us.ClassicalCB(model, noise="known", n_iter=n_iter, tol=0.0,
                                 batch_size=n_problems).fit()
            est.predict(data[:2], noise_var=noise[:2])  # warm-up

            def run_mne(L=model.lead_field, group=group):
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for Y in data[:n_mne]:
                        _gamma_map_opt(Y, L, alpha=1.0, maxit=n_iter, tol=0.0,
                                       update_mode=2, group_size=group, verbose=False)
                return (time.perf_counter() - start) / n_mne

            def run_ours(est=est):
                start = time.perf_counter()
                est.predict(data, noise_var=noise)
                return (time.perf_counter() - start) / n_problems

            seconds = take_turns({"mne": run_mne, "ours": run_ours}, rounds)
            ratios = [m / o for m, o in zip(seconds["mne"], seconds["ours"])]
            label = f"{modality}, {orientation} ({model.n_sources} columns, " \
                    f"{model.n_channels} whitened channels)"
            rows[label] = {"mne_ms": 1e3 * statistics.median(seconds["mne"]),
                           "ours_ms": 1e3 * statistics.median(seconds["ours"]),
                           "speedup": (statistics.median(ratios), min(ratios), max(ratios))}
            print(label, rows[label], flush=True)
    payload["rows"] = rows
    lines = ["| problem | MNE gamma_map core (ms) | ClassicalCB f64, batch "
             f"{n_problems} (ms) | speed-up |", "|---|---|---|---|"]
    lines += [f"| {label} | {r['mne_ms']:.1f} | {r['ours_ms']:.1f} | {_ratio(r['speedup'])} |"
              for label, r in rows.items()]
    body = ("`python -m benchmarks.bench_classical --meg` - whitened problems of "
            "`benchmarks.bench_meg` (mne-python's test recording's sensors and noise "
            f"covariance, fsaverage ico3), T = {n_times} (simulated), {n_iter} iterations, "
            f"known noise; MNE's `_gamma_map_opt` (update_mode=2, `group_size` 3 when "
            f"free) on {n_mne} problems one by one, ClassicalCB on {n_problems} in one "
            f"batch; each timed {rounds} times taking turns, medians and the median "
            "per-round speed-up [lowest, highest].\n\n" + "\n".join(lines))
    return body, payload


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-problems", type=int, default=64)
    parser.add_argument("--n-mne", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="times every solver is timed (median kept)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--meg", action="store_true",
                        help="time the whitened MEG and MEG+EEG problems instead")
    args = parser.parse_args(argv)
    if args.meg:
        body, payload = meg_speed(args.n_problems // 4, args.n_mne // 2, 25, args.rounds)
        if not args.no_write:
            write_section("classical_meg", "Classical solvers on MEG: ClassicalCB vs MNE "
                          "gamma_map", body, payload)
        return

    fwd = us.load_forward()
    data = us.simulate(fwd, args.n_problems, random_state=args.seed)
    rows, payload = {}, {"n_problems": args.n_problems, "n_mne": args.n_mne, "seed": args.seed,
                         "rounds": args.rounds}
    for label, n_iter, tol in (("25 iterations", 25, 0.0), ("to convergence (tol 1e-4)",
                                                             3000, 1e-4)):
        k = args.n_mne
        estimates, seconds = timed_rounds(data, fwd, k, args.n_problems, n_iter, tol,
                                          args.rounds)
        ms = {key: 1e3 * statistics.median(t) for key, t in seconds.items()}
        x_mne, x_ours = estimates["mne"], estimates["f64"]
        truth = data.sources
        rows[f"MNE gamma_map, {label}"] = metrics_row(truth[:k], x_mne, fwd, ms["mne"])
        rows[f"ClassicalCB f64 batch 1, {label}"] = metrics_row(truth[:k], estimates["b1"],
                                                                fwd, ms["b1"])
        # metrics on the same first k problems as MNE; times over the whole batch
        rows[f"ClassicalCB f64 batch 64, {label}"] = metrics_row(truth[:k], x_ours[:k], fwd,
                                                                 ms["f64"])
        rows[f"ClassicalCB f32 batch 64, {label}"] = metrics_row(
            truth[:k], estimates["f32"][:k], fwd, ms["f32"])
        agree = np.linalg.norm(x_ours[:k] - x_mne) / np.linalg.norm(x_mne)
        payload[label] = {"speedup_f64": speedups(seconds, "f64"),
                          "speedup_f32": speedups(seconds, "f32"),
                          "speedup_batch1": speedups(seconds, "b1"),
                          "ms_per_round": {key: [1e3 * x for x in t]
                                           for key, t in seconds.items()},
                          "relative_difference_to_mne": agree}
        print(f"{label}: MNE {ms['mne']:.1f} ms, ours {ms['f64']:.1f} ms (f64), "
              f"{ms['f32']:.1f} ms (f32): x{payload[label]['speedup_f64'][0]:.1f} / "
              f"x{payload[label]['speedup_f32'][0]:.1f}; "
              f"estimates differ by {agree:.2e} relative", flush=True)
    payload["rows"] = rows
    payload["matrix_products"] = rate = matrix_product_rate(data, fwd)
    table = format_table(rows, markdown=True)
    print(format_table(rows))
    body = (f"`python -m benchmarks.bench_classical` - default template (64 channels, 1284 "
            f"sources), T = 100, known noise, {args.n_problems} simulated problems "
            f"(MNE and batch 1: the first {args.n_mne}; every metric is over those first "
            f"{args.n_mne} problems, batch-64 times over all of them). Each solver is "
            f"timed {args.rounds} times, the solvers taking turns; times are medians, "
            "speed-ups the median of the per-round ratios [lowest, highest]. "
            "MNE's `gamma_map` core runs the problems one by one; ClassicalCB batches them. "
            "MNE's final estimate mixes the last two iterations (gamma_K times the "
            "posterior of gamma_K-1), hence the small difference at 25 iterations.\n\n"
            + table + "\n\n" + "\n".join(
                f"- {label}: speed-up {_ratio(v['speedup_f64'])} (float64), "
                f"{_ratio(v['speedup_f32'])} (float32), {_ratio(v['speedup_batch1'])} "
                "(batch 1); "
                f"relative difference of the estimates {v['relative_difference_to_mne']:.1e}"
                for label, v in payload.items() if isinstance(v, dict) and "speedup_f64" in v)
            + "\n\nWhere the time goes (25 iterations, batch 64): ClassicalCB's matrix products "
            f"take {rate['float64']['gflop_per_sample']:.2f} GFLOP per sample "
            "(torch's FlopCounterMode; the N x N factorisations not counted). "
            + "; ".join(f"{dtype}: {r['gflops']:.0f} GFLOP/s, against {r['gemm_gflops']:.0f} "
                        f"GFLOP/s for a 1024 x 1024 GEMM ({r['gflops'] / r['gemm_gflops']:.0%})"
                        for dtype, r in rate.items()) + ".")
    if not args.no_write:
        write_section("classical", "Classical solvers: ClassicalCB vs MNE gamma_map", body,
                      payload)


if __name__ == "__main__":
    main()
