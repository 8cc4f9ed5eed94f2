"""Inference time per sample of the shipped Deep CB: torch eager vs onnxruntime (CPU).

    python -m benchmarks.bench_onnx [--model deep-cb-joint]
"""

from __future__ import annotations

import argparse
import time

import torch

import unfolded_sbl as us
from benchmarks._results import write_section


def per_sample(est, X, repeats):
    est.predict(X[:1])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        est.predict(X)
    return 1e3 * (time.perf_counter() - start) / (repeats * len(X))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="deep-cb-joint")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    fwd = us.load_forward()
    data = us.simulate(fwd, 64, random_state=0)
    threads = torch.get_num_threads()
    torch_est = us.load_pretrained(args.model, forward=fwd)
    onnx_est = us.load_pretrained(args.model, forward=fwd, backend="onnx",
                                  intra_op_num_threads=threads)
    classical = us.ClassicalCB(fwd, dtype="float32").fit()
    rows = []
    for batch, repeats in ((1, 10), (64, 2)):
        X = data.sensors[:batch]
        t_torch = per_sample(torch_est, X, repeats)
        t_onnx = per_sample(onnx_est, X, repeats)
        t_cb = per_sample(classical, X, repeats)
        rows.append((batch, t_cb, t_torch, t_onnx))
        print(f"batch {batch}: ClassicalCB f32 {t_cb:.1f} ms, torch {t_torch:.1f} ms, "
              f"onnxruntime ({onnx_est.provider_}) {t_onnx:.1f} ms per sample")
    table = "\n".join(f"| {b} | {c:.1f} | {t:.1f} | {o:.1f} | {t / o:.2f} |"
                      for b, c, t, o in rows)
    body = f"""`python -m benchmarks.bench_onnx` - `{args.model}`, default template (64 x 1284),
T = 100, {threads} threads for torch and onnxruntime (`{onnx_est.provider_}`). The network runs
in {torch_est.dtype} (float64 is its default since the numerical-safety work), ClassicalCB in
float32.

| batch | ClassicalCB float32, ms/sample | torch eager, ms/sample | onnxruntime, ms/sample | torch / onnxruntime |
|---|---|---|---|---|
{table}
"""
    if not args.no_write:
        write_section("onnx_speed", "Inference speed: torch vs onnxruntime", body,
                      {"rows": [dict(batch=b, classical_ms=c, torch_ms=t, onnx_ms=o)
                                for b, c, t, o in rows], "provider": onnx_est.provider_})


if __name__ == "__main__":
    main()
