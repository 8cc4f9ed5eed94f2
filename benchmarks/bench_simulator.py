"""Simulator throughput (samples per second) on the shipped templates.

    python -m benchmarks.bench_simulator [--n-samples 256] [--rounds 5]

One batch's time moves up to 3x between runs on a shared machine, so each template
draws ``--rounds`` batches, the templates taking turns, and the median is kept.
"""

from __future__ import annotations

import argparse
import statistics
import time

import unfolded_sbl as us
from benchmarks._results import take_turns, write_section


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-samples", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5,
                        help="batches timed per template (median kept)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    templates = (("biosemi64-ico3", 100), ("things63-ico3", 600), ("things63-ico4", 100))
    simulators = {}
    for name, n_times in templates:
        simulators[name] = us.Simulator(name, n_times=n_times, random_state=0)
        simulators[name].draw(8)  # warm-up

    def samples_per_second(sim):
        start = time.perf_counter()
        sim.draw(args.n_samples)
        return args.n_samples / (time.perf_counter() - start)

    rates = take_turns({name: (lambda sim=sim: samples_per_second(sim))
                        for name, sim in simulators.items()}, args.rounds)
    rows = []
    for name, n_times in templates:
        rate = statistics.median(rates[name])
        rows.append((name, n_times, rate, min(rates[name]), max(rates[name])))
        print(f"{name:16s} T={n_times:4d}: {rate:8.0f} samples/s "
              f"[{min(rates[name]):.0f}, {max(rates[name]):.0f}]")
    body = ("`python -m benchmarks.bench_simulator` - batches of "
            f"{args.n_samples} samples, default settings (5-20 patches, 2-4 mm spread, "
            f"5-20 dB per-sensor SNR); median of {args.rounds} batches per template, the "
            "templates taking turns, [lowest, highest] beside it.\n\n"
            "| template | T | samples / s | range |\n|---|---|---|---|\n"
            + "\n".join(f"| {n} | {t} | {r:.0f} | [{lo:.0f}, {hi:.0f}] |"
                         for n, t, r, lo, hi in rows))
    if not args.no_write:
        write_section("simulator", "Simulator throughput", body,
                      {"rounds": args.rounds,
                       "rows": [dict(template=n, n_times=t, samples_per_s=r,
                                     range=[lo, hi]) for n, t, r, lo, hi in rows]})


if __name__ == "__main__":
    main()
