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
    est.predict(X[:1], **{k: v[:1] for k, v in kwargs.items()})  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        est.predict(X, **kwargs)
    return 1e3 * (time.perf_counter() - start) / (repeats * len(X))


#: (batch size, repeats): larger batches are timed once.
BATCHES = ((1, 5), (8, 2), (64, 1), (256, 1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=None,
                        help="shipped models (default: all of them)")
    parser.add_argument("--batches", type=int, nargs="+", default=[b for b, _ in BATCHES])
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
            t_torch = per_sample(torch_est, X, repeats.get(batch, 1), **kwargs)
            t_onnx = per_sample(onnx_est, X, repeats.get(batch, 1), **kwargs)
            rows.append({"model": model, "batch": batch, "classical_f32_ms": t_cb,
                         "torch_ms": t_torch, "onnx_ms": t_onnx,
                         "provider": onnx_est.provider_, "dtype": torch_est.dtype})
            print(f"{model:20s} batch {batch:3d}: ClassicalCB f32 {t_cb:.1f} ms, torch "
                  f"{t_torch:.1f} ms, onnxruntime ({onnx_est.provider_}) {t_onnx:.1f} ms "
                  "per sample", flush=True)
    reference = {r["batch"]: r for r in rows if r["model"] == "deep-cb-joint"}
    table = "\n".join(
        f"| {r['model']} | {r['batch']} | {r['classical_f32_ms']:.1f} | {r['torch_ms']:.1f} | "
        f"{r['onnx_ms']:.1f} | {r['torch_ms'] / r['onnx_ms']:.2f} | "
        + (f"{r['torch_ms'] / reference[r['batch']]['torch_ms']:.2f} / "
           f"{r['onnx_ms'] / reference[r['batch']]['onnx_ms']:.2f}"
           if r["batch"] in reference else "-") + " |" for r in rows)
    body = f"""`python -m benchmarks.bench_onnx` - every shipped model, default template (64 x
1284), T = 100, {threads} threads for torch and onnxruntime (`{rows[0]['provider']}`), one
run. The networks run in float64 (their default since the numerical-safety work),
ClassicalCB (25 iterations) in float32. Known-noise models get the true noise.

| model | batch | ClassicalCB float32, ms/sample | torch eager, ms/sample | onnxruntime, ms/sample | torch / onnxruntime | time / deep-cb-joint's (torch / onnx) |
|---|---|---|---|---|---|---|
{table}
"""
    print(body)
    if not args.no_write:
        write_section("onnx_speed", "Inference speed: torch vs onnxruntime", body,
                      {"rows": rows})


if __name__ == "__main__":
    main()
