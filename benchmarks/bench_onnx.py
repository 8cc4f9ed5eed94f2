"""Inference time per sample of the shipped models: torch eager vs onnxruntime (CPU).

    python -m benchmarks.bench_onnx [--models deep-cb-joint ...] [--batches 1 8 64 256]
"""

from __future__ import annotations

import argparse
import time

import torch

import unfolded_sbl as us
from benchmarks._results import write_section


def per_sample(est, X, repeats, **kwargs):
    """Median ms/sample over ``repeats`` calls, after a warm-up call at the same batch
    size (the first call at a new size pays for memory that later calls reuse)."""
    import statistics

    est.predict(X, **kwargs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        est.predict(X, **kwargs)
        times.append(1e3 * (time.perf_counter() - start) / len(X))
    return statistics.median(times)


#: (batch size, repeats)
BATCHES = ((1, 5), (8, 3), (64, 3), (256, 1))
#: the attention model is timed once at every batch size (about 10x the others' cost)
SLOW = {"deep-attn-cb-joint"}


def _variants():
    """onnxruntime session options tried against the library's choice
    (``onnx_runtime._session``), one change at a time."""
    import onnxruntime as ort

    level = ort.GraphOptimizationLevel
    return {
        "library default (ORT_ENABLE_ALL, arena, sequential)": {},
        "graph optimisation ORT_ENABLE_BASIC": {"graph_optimization_level":
                                                level.ORT_ENABLE_BASIC},
        "graph optimisation ORT_DISABLE_ALL": {"graph_optimization_level":
                                               level.ORT_DISABLE_ALL},
        "CPU memory arena off": {"enable_cpu_mem_arena": False},
        "parallel execution mode": {"execution_mode": ort.ExecutionMode.ORT_PARALLEL},
    }


def session_options(fwd, data, threads, model="deep-cb-joint", batch=64, rounds=3):
    """ms/sample of ``model`` at ``batch`` under each session variant: the sessions
    take turns for ``rounds`` rounds and the median is kept."""
    import statistics

    import onnxruntime as ort

    est = us.load_pretrained(model, forward=fwd, backend="onnx", intra_op_num_threads=threads)
    X = data.sensors[:batch]
    sessions = {}
    for name, changes in _variants().items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        for key, value in changes.items():
            setattr(options, key, value)
        sessions[name] = ort.InferenceSession(str(est.path), sess_options=options,
                                              providers=[est.provider_])
    times = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            est.session_ = session
            times[name].append(per_sample(est, X, 1))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=None,
                        help="shipped models (default: all of them)")
    parser.add_argument("--batches", type=int, nargs="+", default=[b for b, _ in BATCHES])
    parser.add_argument("--no-options", action="store_true",
                        help="skip the onnxruntime session-options table")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    models = args.models or us.list_pretrained()
    fwd = us.load_forward()
    data = us.simulate(fwd, max(args.batches), random_state=0)
    threads = torch.get_num_threads()
    classical = us.ClassicalCB(fwd, dtype="float32").fit()
    repeats = dict(BATCHES)
    rows = []
    for batch in args.batches:
        X = data.sensors[:batch]
        noise = data.noise_var[:batch]
        t_cb = per_sample(classical, X, repeats.get(batch, 1))
        for model in models:
            torch_est = us.load_pretrained(model, forward=fwd)
            onnx_est = us.load_pretrained(model, forward=fwd, backend="onnx",
                                          intra_op_num_threads=threads)
            kwargs = {} if torch_est.learn_noise else {"noise_var": noise}
            n_repeats = 1 if model in SLOW and batch > 1 else repeats.get(batch, 1)
            t_torch = per_sample(torch_est, X, n_repeats, **kwargs)
            t_onnx = per_sample(onnx_est, X, n_repeats, **kwargs)
            rows.append({"model": model, "batch": batch, "classical_f32_ms": t_cb,
                         "torch_ms": t_torch, "onnx_ms": t_onnx,
                         "provider": onnx_est.provider_, "dtype": torch_est.dtype})
            print(f"{model:20s} batch {batch:3d}: ClassicalCB f32 {t_cb:.1f} ms, torch "
                  f"{t_torch:.1f} ms, onnxruntime ({onnx_est.provider_}) {t_onnx:.1f} ms "
                  "per sample", flush=True)
    options = {} if args.no_options else session_options(fwd, data, threads)
    base = options.get("library default (ORT_ENABLE_ALL, arena, sequential)")
    options_table = "\n".join(f"| {name} | {ms:.1f} | {ms / base:.2f} |"
                              for name, ms in options.items())
    reference = {r["batch"]: r for r in rows if r["model"] == "deep-cb-joint"}
    table = "\n".join(
        f"| {r['model']} | {r['batch']} | {r['classical_f32_ms']:.1f} | {r['torch_ms']:.1f} | "
        f"{r['onnx_ms']:.1f} | {r['torch_ms'] / r['onnx_ms']:.2f} | "
        + (f"{r['torch_ms'] / reference[r['batch']]['torch_ms']:.2f} / "
           f"{r['onnx_ms'] / reference[r['batch']]['onnx_ms']:.2f}"
           if r["batch"] in reference else "-") + " |" for r in rows)
    body = f"""`python -m benchmarks.bench_onnx` - every shipped model, default template (64 x
1284), T = 100, {threads} threads for torch and onnxruntime (`{rows[0]['provider']}`), one
run: each cell is the median of 5 / 3 / 3 / 1 calls at batch 1 / 8 / 64 / 256 (one call for
the attention model beyond batch 1) after a warm-up call at the same batch size. The networks run in float64 (their default since the numerical-safety work),
ClassicalCB (25 iterations) in float32. Known-noise models get the true noise.

| model | batch | ClassicalCB float32, ms/sample | torch eager, ms/sample | onnxruntime, ms/sample | torch / onnxruntime | time / deep-cb-joint's (torch / onnx) |
|---|---|---|---|---|---|---|
{table}
"""
    if options:
        body += f"""
Session options (`onnx_runtime._session`), deep-cb-joint at batch 64, one change at a
time, the sessions taking turns (median of 3 rounds):

| session | ms/sample | time / library default's |
|---|---|---|
{options_table}
"""
    print(body)
    if not args.no_write:
        write_section("onnx_speed", "Inference speed: torch vs onnxruntime", body,
                      {"rows": rows, "session_options": options})


if __name__ == "__main__":
    main()
