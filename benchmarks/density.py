"""Source spaces denser than ico3: ClassicalCB's depth and the learned models.

Usage::

    python -m benchmarks.density [--n-samples 96] [--quick]

Writes the ``density`` section of ``benchmarks/RESULTS.md`` and
``results/density.json``.  Rows are fsaverage source spaces from ico3 (10 mm
spacing, the training one) through MNE's common oct6 (4.5 mm) and ico4 (5.5 mm)
to ico5 (2.8 mm, 20484 sources); oct6 and ico5 are not shipped and are built on
demand into ``benchmarks/_work/density`` like the shipped templates (nominal and
perturbed, about 20 s each).  Data come from each row's perturbed template (the
paper's simulator and the robust one), every method inverts with the nominal one.
Cells: rMSE ratio to ClassicalCB-25-joint on the same samples (F1 difference);
the learned models run as ``load_pretrained`` gives them (their regime check
solves source spaces outside their spacings classically, a ratio of exactly 1).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import unfolded_sbl as us
from benchmarks._forwards import template_or_built
from benchmarks._results import HERE, write_section
from benchmarks.robustness import per_sample_scores, ratio_interval
from unfolded_sbl.forward import source_spacing
from unfolded_sbl.simulate import ROBUST_SIMULATOR

WORK = HERE / "_work" / "density"
#: (cap, source space) per row, coarsest first
SOURCE_SPACES = (("biosemi64", "ico3"), ("biosemi64", "oct6"), ("biosemi64", "ico4"),
                 ("biosemi64", "ico5"), ("things63", "ico5"))
SIMULATORS = {"paper": {}, "robust": ROBUST_SIMULATOR}
REFERENCE = "ClassicalCB-25"
MODELS = ("deep-cb-joint", "deep-graph-cb-joint", "deep-graph-cb-joint-ico4")
#: the model made for denser source spaces, also run through onnxruntime
DENSER_MODEL = "deep-graph-cb-joint-ico4"
#: samples per ``predict``: an ico5 estimate of 16 samples of T = 300 holds 0.8 GB
CHUNK = 16
SEED = 8000


def load_forward(cap, spacing, perturbed=False, verbose=True):
    """A shipped template, or the same cap on another source space built once."""
    return template_or_built(cap, spacing, perturbed, WORK, verbose=verbose)


def methods(fwd):
    out = {REFERENCE: us.ClassicalCB(fwd).fit(),
           "ClassicalCB-10": us.ClassicalCB(fwd, n_iter=10).fit(),
           "ClassicalCB-100": us.ClassicalCB(fwd, n_iter=100).fit()}
    for name in MODELS:
        out[name] = us.load_pretrained(name, forward=fwd)
    out[f"{DENSER_MODEL} (onnx)"] = us.load_pretrained(DENSER_MODEL, forward=fwd,
                                                      backend="onnx")
    return out


def scores(est, data):
    """Per-sample rMSE and F1, predicting :data:`CHUNK` samples at a time."""
    return per_sample_scores(est, data, CHUNK)


def run(n_samples, quick=False, verbose=True):
    rows = []
    spaces = SOURCE_SPACES[:2] if quick else SOURCE_SPACES
    for i, (cap, spacing) in enumerate(spaces):
        fwd = load_forward(cap, spacing, verbose=verbose)
        perturbed = load_forward(cap, spacing, perturbed=True, verbose=verbose)
        solvers = methods(fwd)
        for j, (sim, params) in enumerate(SIMULATORS.items()):
            seed = SEED + 10 * i + j
            start = time.perf_counter()
            data = us.simulate(perturbed, n_samples, random_state=seed, **params)
            per_sample, fallback = {}, {}
            for label, est in solvers.items():
                per_sample[label] = scores(est, data)
                if hasattr(est, "classical_fallback_"):
                    fallback[label] = float(np.mean(est.classical_fallback_))
            ref_errors, ref_f1 = per_sample[REFERENCE]
            cells = {label: {"rmse": float(errors.mean()),
                             "ratio": float(errors.mean() / ref_errors.mean()),
                             "ratio_95": ratio_interval(errors, ref_errors, seed),
                             "f1_diff": float(f1s.mean() - ref_f1.mean()),
                             "classical_fallback": fallback.get(label)}
                     for label, (errors, f1s) in per_sample.items()}
            rows.append({"cap": cap, "source_space": spacing, "simulator": sim,
                         "n_sources": fwd.n_sources, "spacing_mm": 1e3 * source_spacing(fwd),
                         "n_samples": n_samples, "seed": seed, "cells": cells})
            if verbose:
                print(f"{cap}-{spacing} {sim}: " + " ".join(
                    f"{label}={c['ratio']:.3f}" for label, c in cells.items()),
                    f"({time.perf_counter() - start:.0f} s)", flush=True)
    return rows


def markdown(rows):
    labels = [label for label in rows[0]["cells"] if label != REFERENCE]
    lines = ["| source space | sources | spacing | simulator | ClassicalCB-25 rMSE | "
             + " | ".join(labels) + " |", "|" + "---|" * (5 + len(labels))]
    for row in rows:
        cells = []
        for label in labels:
            c = row["cells"][label]
            text = f"{c['ratio']:.3f} ({c['f1_diff']:+.3f})"
            if label.startswith(DENSER_MODEL) and "onnx" not in label:
                low, high = c["ratio_95"]
                text = f"{c['ratio']:.3f} [{low:.3f}, {high:.3f}] ({c['f1_diff']:+.3f})"
            if c["classical_fallback"] == 1.0:
                text += " classical"
            cells.append(text)
        lines.append(f"| {row['cap']}-{row['source_space']} | {row['n_sources']} | "
                     f"{row['spacing_mm']:.1f} mm | {row['simulator']} | "
                     f"{row['cells'][REFERENCE]['rmse']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-samples", type=int, default=96)
    parser.add_argument("--quick", action="store_true", help="ico3 and oct6 only")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = run(args.n_samples, args.quick)
    table = markdown(rows)
    if args.no_write:
        print(table)
        return
    body = f"""`python -m benchmarks.density` ({time.perf_counter() - start:.0f} s). fsaverage
source spaces from the training one (ico3) to ico5; oct6 and ico5 are built on demand like
the shipped templates. {args.n_samples} samples per row from the row's perturbed template
(skull x0.5, electrodes jittered 3 mm; seeds {SEED} + 10 x source space + simulator),
inversion with the nominal one. Cells: rMSE ratio to ClassicalCB-25-joint on the same
samples (F1 difference); `{DENSER_MODEL}` with its paired-bootstrap 95 % interval;
`classical`: the model's regime check solved every sample classically (its corrections act
only on source spacings it was made for: `regime.acting_spacings`). The paper's
simulator: 5-20 patches of 2-4 mm, 5-20 dB, T = 100; the robust one: `ROBUST_SIMULATOR`.

{table}
"""
    write_section("density", "Source spaces denser than ico3", body,
                  {"n_samples": args.n_samples, "rows": rows})


if __name__ == "__main__":
    main()
