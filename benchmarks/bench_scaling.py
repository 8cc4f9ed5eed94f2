"""Data-parallel training on this machine: samples per second with 1 and 2 processes,
and the projected time of the paper's budget (one run).

    python -m benchmarks.bench_scaling [--steps 8] [--batch 16] [--layers 25]

Deep CB (MLP corrections, joint noise) on the default forward model, joint phase
only (what distributed training runs), the same global batch either way: one process
with all the machine's threads, or ``torch.distributed.run`` with two gloo processes
of one thread each, each drawing half the batch from its own stream.  The time is
the wall time of ``fit_simulated`` on rank 0 after a one-step warm-up fit, so
process start-up and the first step's allocations are left out (the timed fit still
builds its simulator and a 4-sample validation set).  Writes the ``scaling``
section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

#: The paper's training budget: 100 epochs of 100,000 samples.
PAPER_SAMPLES = 100 * 100_000


def _estimator(args, batch, steps):
    import unfolded_sbl as us

    return us.UnfoldedSBLRegressor(
        "biosemi64-ico3", correction="mlp", noise_correction="mlp", n_layers=args.layers,
        max_epochs=1, steps_per_epoch=steps, progressive_steps=0,
        batch_size=batch, n_val=4, random_state=0, verbose=False)


def worker(args):
    """A one-step warm-up fit, then the timed fit; rank 0 prints its seconds as JSON."""
    from unfolded_sbl.distributed import init_from_env, world

    init_from_env()
    rank, n_ranks = world()
    batch = args.batch // n_ranks
    _estimator(args, batch, steps=1).fit_simulated()
    start = time.perf_counter()
    _estimator(args, batch, steps=args.steps).fit_simulated()
    if rank == 0:
        print(json.dumps({"seconds": time.perf_counter() - start, "processes": n_ranks}))


def _timed(args, processes):
    """Seconds of the timed fit (steps x global batch samples) with ``processes``."""
    base = [sys.executable, "-m", "benchmarks.bench_scaling", "--worker",
            "--steps", str(args.steps), "--batch", str(args.batch),
            "--layers", str(args.layers)]
    env = dict(os.environ)
    if processes > 1:
        base = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", str(processes), "-m", *base[2:]]
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    start = time.perf_counter()
    run = subprocess.run(base, capture_output=True, text=True, env=env, check=True)
    wall = time.perf_counter() - start
    line = [ln for ln in run.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line), wall


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--layers", type=int, default=25)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    rows = {}
    for processes in (1, 2):
        record, wall = _timed(args, processes)
        rate = args.steps * args.batch / record["seconds"]
        rows[processes] = {"samples_per_s": rate, "fit_s": record["seconds"], "wall_s": wall,
                           "paper_budget_h": PAPER_SAMPLES / rate / 3600}
    lines = ["| processes | samples/s | ratio to 1 process | paper budget (10^7 samples) |",
             "|---|---|---|---|"]
    lines += [f"| {p} | {r['samples_per_s']:.1f} | "
              f"{r['samples_per_s'] / rows[1]['samples_per_s']:.2f} | "
              f"{r['paper_budget_h']:.0f} h |" for p, r in rows.items()]
    body = (f"`python -m benchmarks.bench_scaling`: Deep CB, {args.layers} layers, joint phase, "
            f"global batch {args.batch}, {args.steps} steps per epoch on the default cap; "
            "one process with every thread against two gloo processes (torchrun) with one "
            "thread each; samples per second of the timed fit.\n\n" + "\n".join(lines))
    print(body)
    if not args.no_write:
        from benchmarks._results import write_section

        write_section("scaling", "Data-parallel training on this machine", body,
                      {str(k): v for k, v in rows.items()})


if __name__ == "__main__":
    main()
