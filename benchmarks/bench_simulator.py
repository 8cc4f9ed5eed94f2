"""Simulator throughput (samples per second) on the shipped templates.

    python -m benchmarks.bench_simulator [--n-samples 256]
"""

from __future__ import annotations

import argparse
import time

import unfolded_sbl as us
from benchmarks._results import write_section


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-samples", type=int, default=256)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    for name, n_times in (("biosemi64-ico3", 100), ("things63-ico3", 600),
                          ("things63-ico4", 100)):
        sim = us.Simulator(name, n_times=n_times, random_state=0)
        sim.draw(8)  # warm-up
        start = time.perf_counter()
        sim.draw(args.n_samples)
        rate = args.n_samples / (time.perf_counter() - start)
        rows.append((name, n_times, rate))
        print(f"{name:16s} T={n_times:4d}: {rate:8.0f} samples/s")
    body = ("`python -m benchmarks.bench_simulator` - one batch of "
            f"{args.n_samples} samples, default settings (5-20 patches, 2-4 mm spread, "
            "5-20 dB per-sensor SNR).\n\n| template | T | samples / s |\n|---|---|---|\n"
            + "\n".join(f"| {n} | {t} | {r:.0f} |" for n, t, r in rows))
    if not args.no_write:
        write_section("simulator", "Simulator throughput", body,
                      {"rows": [dict(template=n, n_times=t, samples_per_s=r)
                                for n, t, r in rows]})


if __name__ == "__main__":
    main()
