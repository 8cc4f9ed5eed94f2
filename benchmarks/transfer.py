"""Zero-shot transfer of the shipped models to other caps and source spaces.

Usage::

    python -m benchmarks.transfer [--n-samples 256] [--n-explain 64] [--quick]

Writes the ``transfer`` section of ``benchmarks/RESULTS.md`` and
``results/transfer.json``:

1. the transfer table: every shipped model (trained on biosemi64-ico3 only)
   against ClassicalCB-25-joint on the perturbed templates of other caps and of
   ico4 (the paper simulator, T = 100), rMSE ratio and F1 difference;
2. the explanation of the ico4 behaviour: ClassicalCB's error against its
   iteration count at ico3 and ico4, and how far each learned model has
   sparsified (the fraction of the total source variance held by the 1 % of
   sources with the largest variance, compared with ClassicalCB at 25, 50 and
   100 iterations), with the mean magnitude of the corrections.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import unfolded_sbl as us
from unfolded_sbl.metrics import f1, rmse

from ._results import write_section
from .robustness import per_sample_scores, ratio_interval

TRAIN_FORWARD = "biosemi64-ico3"
TARGETS = ("biosemi64-ico3", "things63-ico3", "biosemi128-ico3", "biosemi64-ico4",
           "things63-ico4", "biosemi128-ico4")
REFERENCE = "ClassicalCB-25"
ITERATIONS = (5, 10, 25, 50, 100)


def shipped():
    return [name for name in us.list_pretrained() if "known" not in name]


def top_share(source_var, fraction=0.01):
    """Mean over samples of the share of the total variance held by the top sources."""
    source_var = np.sort(np.asarray(source_var), axis=1)[:, ::-1]
    k = max(1, int(round(fraction * source_var.shape[1])))
    return float(np.mean(source_var[:, :k].sum(1) / source_var.sum(1)))


def transfer_rows(n_samples, targets, models, backends, verbose=True):
    rows = {}
    for i, name in enumerate(targets):
        fwd = us.load_forward(name)
        data = us.simulate(us.load_forward(f"{name}-perturbed"), n_samples,
                           random_state=7000 + i)
        start = time.perf_counter()

        def scores(est):
            # per-sample scores, not the estimates: at ico4 each estimate of 256
            # samples holds 1 GB
            return per_sample_scores(est, data)

        per_sample = {REFERENCE: scores(us.ClassicalCB(fwd).fit()),
                      "ClassicalCB-100": scores(us.ClassicalCB(fwd, n_iter=100).fit())}
        for model in models:
            for backend in backends:
                label = model if backend == "torch" else f"{model} (onnx)"
                est = us.load_pretrained(model, forward=fwd, backend=backend)
                per_sample[label] = scores(est)
            # the learned corrections forced on where the regime check solves
            # classically (another source spacing): what they would do there
            if est.classical_fallback_.all():
                per_sample[f"{model} (corrections forced)"] = scores(
                    us.load_pretrained(model, forward=fwd, regime_check=False))
        ref_errors, ref_f1 = per_sample[REFERENCE]
        cells = {}
        for m, (errors, f1_scores) in per_sample.items():
            cells[m] = {"rmse": float(errors.mean()),
                        "ratio": float(errors.mean() / ref_errors.mean()),
                        "ratio_95": ratio_interval(errors, ref_errors, 7000 + i),
                        "f1_diff": float(f1_scores.mean() - ref_f1.mean())}
        rows[name] = {"n_samples": n_samples, "seed": 7000 + i, "n_sources": fwd.n_sources,
                      "cells": cells}
        if verbose:
            print(f"{name:18s} " + " ".join(f"{m}={c['ratio']:.3f}"
                                            for m, c in rows[name]["cells"].items()),
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    return rows


def explanation_rows(n_samples, models, verbose=True):
    """ClassicalCB error against depth and the learned models' sparsity, ico3 vs ico4."""
    rows = {}
    for i, name in enumerate(("biosemi64-ico3", "biosemi64-ico4")):
        fwd = us.load_forward(name)
        data = us.simulate(us.load_forward(f"{name}-perturbed"), n_samples,
                           random_state=7100 + i)
        classical = {}
        for n_iter in ITERATIONS:
            est = us.ClassicalCB(fwd, n_iter=n_iter).fit()
            pred = est.predict(data.sensors)
            classical[n_iter] = {"rmse": rmse(data.sources, pred),
                                 "f1": f1(data.sources, pred),
                                 "top1": top_share(est.source_var_)}
        true_top = top_share((data.sources ** 2).mean(-1) + 1e-300)
        learned = {}
        for model in models:
            # the corrections themselves, also where the regime check would skip them
            est = us.load_pretrained(model, forward=fwd, regime_check=False)
            layers = est.predict_trajectory(data.sensors)
            corrections = [np.mean(np.abs(layer["source_correction"]))
                           for layer in layers if layer["source_correction"] is not None]
            pred = layers[-1]["sources"]
            learned[model] = {"rmse": rmse(data.sources, pred), "f1": f1(data.sources, pred),
                              "top1": top_share(layers[-1]["source_var"]),
                              "mean_abs_correction": float(np.mean(corrections)),
                              "mean_abs_correction_first5": float(np.mean(corrections[:5]))}
        rows[name] = {"n_sources": fwd.n_sources, "seed": 7100 + i, "true_top1": true_top,
                      "classical": classical, "learned": learned}
        if verbose:
            print(name, {k: round(v["rmse"], 3) for k, v in classical.items()},
                  {k: (round(v["rmse"], 3), round(v["top1"], 3)) for k, v in learned.items()},
                  flush=True)
    return rows


#: Issue 12's zero-shot check: these targets, every shipped model at most 1.00 and
#: the spatial (graph) models at most SPATIAL_TARGET.
CHECK_TARGETS = ("things63-ico4", "biosemi128-ico4")
SPATIAL_TARGET = 0.95


def criterion_check(table):
    """Markdown: each shipped model's (torch) ratio at the ico4 targets with its
    paired-bootstrap 95 % interval, against 1.00 and, for graph models, 0.95."""
    lines = ["Zero-shot check at the ico4 targets (torch; rMSE ratio with the paired-bootstrap "
             "95 % interval over the row's samples; every model must be at most 1.00, the "
             f"graph models at most {SPATIAL_TARGET:.2f}):", ""]
    for model in shipped():
        parts = []
        for target in CHECK_TARGETS:
            if target not in table:
                continue
            cell = table[target]["cells"][model]
            bound = SPATIAL_TARGET if "graph" in model else 1.0
            verdict = ("meets" if cell["ratio"] <= bound + 1e-9 else "misses") + f" {bound:.2f}"
            if cell["ratio_95"][1] <= bound:
                verdict += ", whole interval below"
            elif cell["ratio_95"][0] > bound:
                verdict += ", whole interval above"
            parts.append(f"{target} {cell['ratio']:.3f} [{cell['ratio_95'][0]:.3f}, "
                         f"{cell['ratio_95'][1]:.3f}] ({verdict})")
        lines.append(f"- {model}: " + "; ".join(parts))
    return "\n".join(lines)


def markdown(table, explanation, n_samples, n_explain):
    columns = []
    for row in table.values():
        columns += [c for c in row["cells"] if c not in columns and c != REFERENCE]
    lines = ["### Transfer table", "",
             f"{n_samples} samples per row from the row's `-perturbed` template (paper "
             "simulator: 5-20 patches of 2-4 mm, 5-20 dB, T = 100, seeds 7000 + row); "
             "methods invert with the nominal template. Cells: rMSE ratio to "
             f"{REFERENCE}-joint (F1 difference). Every learned model was trained on "
             f"{TRAIN_FORWARD} only. Where a model's source spacing differs from the "
             "one it was trained for by more than `SPACING_TOLERANCE` the regime check "
             "solves classically: the ico3 models at ico4, and the other way round "
             "`deep-graph-cb-joint-ico4` (trained at ico3 on 2x wider patches for a 2x "
             "denser source space, `zoo.DENSER`) at ico3; `(corrections forced)` is the "
             "same model with `regime_check=False`.", "",
             "| target | sources | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for name, row in table.items():
        cells = [f"{row['cells'][c]['ratio']:.2f} ({row['cells'][c]['f1_diff']:+.2f})"
                 if c in row["cells"] else "-" for c in columns]
        lines.append(f"| {name} | {row['n_sources']} | " + " | ".join(cells) + " |")
    lines += ["", criterion_check(table), "", "### Why ico4 differs", "",
              "Same cap (biosemi64), ico3 vs ico4 source space, the row's perturbed "
              f"template, {n_explain} samples. `top 1 %`: share of the total source variance "
              "held by the 1 % of sources with the largest variance (the truth's in the "
              "header); `|c|`: mean magnitude of the source corrections over the layers.", ""]
    for name, row in explanation.items():
        lines += [f"**{name}** ({row['n_sources']} sources; truth top 1 %: "
                  f"{row['true_top1']:.2f})", "",
                  "| solver | rMSE | F1 | top 1 % | mean abs correction |", "|---|---|---|---|---|"]
        for n_iter, cell in row["classical"].items():
            lines.append(f"| ClassicalCB-{n_iter} | {cell['rmse']:.3f} | {cell['f1']:.3f} | "
                         f"{cell['top1']:.2f} | - |")
        for model, cell in row["learned"].items():
            lines.append(f"| {model} | {cell['rmse']:.3f} | {cell['f1']:.3f} | "
                         f"{cell['top1']:.2f} | {cell['mean_abs_correction']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # 256 per row: issue 12's criterion (0.95) lay inside the 95 % interval that 64
    # samples gave ([0.927, 0.978] at biosemi128-ico4); the model cards use 256 too
    parser.add_argument("--n-samples", type=int, default=256,
                        help="samples per row of the transfer table")
    # the explanation keeps every layer's estimate: 64 samples at ico4 hold 6.5 GB
    parser.add_argument("--n-explain", type=int, default=64,
                        help="samples per source space in the ico3/ico4 explanation")
    parser.add_argument("--quick", action="store_true",
                        help="4 samples, torch only, no RESULTS.md section")
    parser.add_argument("--explain-only", action="store_true")
    args = parser.parse_args(argv)
    n_samples, n_explain = (4, 4) if args.quick else (args.n_samples, args.n_explain)
    models = shipped()
    explanation = explanation_rows(n_explain, models)
    if args.explain_only:
        return
    table = transfer_rows(n_samples, TARGETS if not args.quick else TARGETS[:1], models,
                          ("torch",) if args.quick else ("torch", "onnx"))
    if args.quick:
        return
    write_section("transfer", "Zero-shot transfer: other caps, ico4",
                  markdown(table, explanation, n_samples, n_explain),
                  {"n_samples": n_samples, "n_explain": n_explain, "table": table,
                   "explanation": explanation})


if __name__ == "__main__":
    main()
