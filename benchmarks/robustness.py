"""Robustness matrix: every method on every condition, relative to ClassicalCB.

Rows are conditions (nominal and perturbed templates; each head-model error
alone; SNR bins from -10 to 40 dB; 1 to 40 patches; spreads 1-15 mm; white and
coloured noise; other caps, two low-density ones included; ico4), columns are methods (ClassicalCB at 25 and
100 iterations, each shipped model in torch and in ONNX, a DeepSIF-like
end-to-end network trained on the same robust distribution with Deep CB's
stage-2 sample budget).  Cells: rMSE ratio to ClassicalCB-25-joint on the same
samples, and F1 difference to it.  Every method inverts with the nominal
template of its cap; the data come from another head model.

    python -m benchmarks.robustness [--n-samples 64] [--quick] [--no-write]

Single-error head models are built once (about 6 s each) into
``benchmarks/_work/robustness`` with the ensemble builder
(``unfolded_sbl.head_models``); their BEM is ico3, so the row "BEM ico3 only"
isolates that difference from the error each row adds.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import unfolded_sbl as us
from benchmarks._forwards import template_or_built
from benchmarks._results import HERE, write_section
from unfolded_sbl import head_models as hm
from unfolded_sbl.metrics import f1, rmse
from unfolded_sbl.simulate import ROBUST_SIMULATOR
from unfolded_sbl.zoo import ROBUST_BUDGETS, TRAIN_FORWARD

WORK = HERE / "_work" / "robustness"
SHIPPED = ("deep-cb-joint", "deep-cb-joint-classical-noise", "deep-cb-known",
           "deep-attn-cb-joint", "deep-graph-cb-joint", "deep-graph-cb-joint-ico4",
           "deep-cb-joint-focal")
REFERENCE = "ClassicalCB-25"

#: single head-model errors: label -> member parameters (others nominal)
NOMINAL_MEMBER = {"conductivity": [0.3, 0.006, 0.3], "head_scale": 1.0,
                  "electrode_jitter_sd": 0.0, "rotation_axis": [0.0, 0.0, 1.0],
                  "rotation_deg": 0.0, "translation": [0.0, 0.0, 0.0], "seed": 7}
SINGLE_ERRORS = {
    "BEM ico3 only": ({}, 0.0),
    "skull 0.003 S/m": ({"conductivity": [0.3, 0.003, 0.3]}, 0.0),
    "skull 0.015 S/m": ({"conductivity": [0.3, 0.015, 0.3]}, 0.0),
    "brain 0.45 / scalp 0.25 S/m": ({"conductivity": [0.45, 0.006, 0.25]}, 0.0),
    "electrodes jittered (5 mm sd, max 10)": ({"electrode_jitter_sd": 0.005}, 0.0),
    "co-registration 5 deg + 5 mm": ({"rotation_axis": [0.6, 0.0, 0.8], "rotation_deg": 5.0,
                                      "translation": [0.0029, 0.0029, 0.0029]}, 0.0),
    "head size +8 %": ({"head_scale": 1.08}, 0.0),
    "head size -8 %": ({"head_scale": 0.92}, 0.0),
    "orientation error up to 30 deg": ({}, 30.0),
}


#: Caps that recordings bring and no shipped template has: low density (the clinical
#: 10-20 system's 19 electrodes, BioSemi's 32) and high density (EGI's HydroCel nets of
#: 128 and 256 electrodes, 2x and 4x the training cap's channels).  ``name-ico3`` and
#: ``name-ico3-perturbed`` (as the shipped perturbed templates: skull x0.5, electrodes
#: jittered 3 mm) are built once into ``WORK`` (``templates.make_template_forward``).
#: New caps go at the end: each row's seed is its index.
BUILT_CAPS = {"standard_1020-19": ("Fp1 Fp2 F7 F3 Fz F4 F8 T7 C3 Cz C4 T8 P7 P3 Pz P4 P8 "
                                   "O1 O2").split(),
              "biosemi32": "biosemi32",
              "GSN-HydroCel-128": "GSN-HydroCel-128",
              "GSN-HydroCel-256": "GSN-HydroCel-256"}


def load_forward(name, verbose=True):
    """A shipped template, or one of :data:`BUILT_CAPS` (built on the first call)."""
    cap = name.split("-ico3")[0]
    if cap not in BUILT_CAPS:
        return us.load_forward(name)
    return template_or_built(cap, "ico3", name.endswith("-perturbed"), WORK, BUILT_CAPS[cap],
                             verbose)


def single_error_models(verbose=True):
    """label -> HeadModelEnsemble of one member (built once, cached)."""
    from unfolded_sbl.templates import make_subjects_dir

    WORK.mkdir(parents=True, exist_ok=True)
    cap, spacing = TRAIN_FORWARD.split("-")
    out = {}
    for label, (change, tilt) in SINGLE_ERRORS.items():
        path = WORK / (label.replace(" ", "_").replace("/", "-") + ".npz")
        if not path.exists():
            if verbose:
                print(f"building head model: {label}")
            params = {**NOMINAL_MEMBER, **change}
            gain = hm.make_member(cap, spacing, params, make_subjects_dir())
            hm.HeadModelEnsemble(gain[None].astype(np.float32), [params], TRAIN_FORWARD,
                                 tilt).save(path)
        out[label] = hm.HeadModelEnsemble.load(path)
    return out


def conditions(quick=False):
    """(label, group, forward name, data source, simulator params) per row."""
    perturbed = f"{TRAIN_FORWARD}-perturbed"
    rows = [("nominal template", "head", TRAIN_FORWARD, None, {}),
            ("perturbed template", "head", TRAIN_FORWARD, perturbed, {})]
    rows += [(label, "head", TRAIN_FORWARD, ("single", label), {}) for label in SINGLE_ERRORS]
    rows += [(f"SNR {lo} to {lo + 10} dB", "snr", TRAIN_FORWARD, perturbed,
              {"snr_db": (lo, lo + 10)}) for lo in (-10, 0, 10, 20, 30)]
    rows += [(f"{n} patch{'es' if n > 1 else ''}", "patches", TRAIN_FORWARD, perturbed,
              {"n_patches": n}) for n in (1, 2, 5, 10, 20, 40)]
    rows += [(f"spread {lo}-{lo + 3} mm", "spread", TRAIN_FORWARD, perturbed,
              {"spread": (lo * 1e-3, (lo + 3) * 1e-3), "patch_distance": "mesh"})
             for lo in (1, 4, 7, 10, 12)]
    rows += [("white noise", "noise", TRAIN_FORWARD, perturbed, {"noise_color": "white"}),
             ("coloured noise", "noise", TRAIN_FORWARD, perturbed,
              {"noise_color": "coloured"}),
             ("robust simulator (training distribution)", "noise", TRAIN_FORWARD, perturbed,
              dict(ROBUST_SIMULATOR))]
    rows += [(f"{name} (perturbed)", "cap", name, f"{name}-perturbed", {})
             for name in ("biosemi128-ico3", "things63-ico3", "things63-ico4")]
    # appended after the rows above so that their seeds (SEED + row index) stay
    rows += [(f"{cap}-ico3 (perturbed)", "cap", f"{cap}-ico3", f"{cap}-ico3-perturbed", {})
             for cap in BUILT_CAPS]
    if quick:
        rows = rows[:3] + rows[-1 - len(BUILT_CAPS):-len(BUILT_CAPS)]
    return rows


def make_data(source, fwd, params, n_samples, seed, singles):
    if isinstance(source, str):
        source = load_forward(source)
    if isinstance(source, tuple):
        sim = us.Simulator(fwd, random_state=seed, head_models=singles[source[1]],
                           nominal_prob=0.0, **params)
        return sim.draw(n_samples)
    return us.simulate(source or fwd, n_samples, random_state=seed, **params)


def end_to_end_baseline(verbose=True):
    """DeepSIF-like network trained on the robust distribution (cached)."""
    budget = ROBUST_BUDGETS["deep-cb-joint"]
    params = dict(max_epochs=budget["max_epochs"], steps_per_epoch=budget["steps_per_epoch"],
                  batch_size=budget["batch_size"], learning_rate=1e-3)
    est = us.EndToEndRegressor(TRAIN_FORWARD, random_state=0, verbose=verbose, **params)
    path = WORK / "end-to-end-robust.pt"
    if path.exists():
        est.set_params(max_epochs=0).fit_simulated()
        est.network_.load_state_dict(torch.load(path, weights_only=True))
        est.network_.eval()
        return est
    ensemble = hm.load_head_ensemble(*TRAIN_FORWARD.split("-"), verbose=verbose)
    est.fit_simulated(**ROBUST_SIMULATOR, head_models=ensemble)
    WORK.mkdir(parents=True, exist_ok=True)
    torch.save(est.network_.state_dict(), path)
    return est


def methods(fwd, e2e, models=None):
    """The matrix's columns on ``fwd``; with ``models``, ClassicalCB-25 and those shipped
    models only (to add them to an existing matrix: :func:`merge`)."""
    out = {REFERENCE: us.ClassicalCB(fwd).fit()}
    if models is None:
        out["ClassicalCB-100"] = us.ClassicalCB(fwd, n_iter=100).fit()
        out["ClassicalCB-25-known"] = us.ClassicalCB(fwd, noise="known").fit()
    for name in [n for n in SHIPPED if n in us.list_pretrained()] if models is None else models:
        out[f"{name}"] = us.load_pretrained(name, forward=fwd)
        out[f"{name} (onnx)"] = us.load_pretrained(name, forward=fwd, backend="onnx")
    if e2e is not None and fwd.name == TRAIN_FORWARD:
        out["end-to-end (robust)"] = e2e
    return out


def _known(name):
    return "known" in name


#: paired-bootstrap resamples of each cell's interval
N_BOOTSTRAP = 2000


def per_sample_scores(est, data, chunk=None):
    """Per-sample rMSE and F1 of ``est`` on ``data``, predicting ``chunk`` samples at a
    time (None: all at once); the estimates themselves are not kept."""
    chunk = chunk or len(data.sensors)
    errors, f1s = [], []
    for start in range(0, len(data.sensors), chunk):
        part = slice(start, start + chunk)
        estimate = est.predict(data.sensors[part])
        errors.append(rmse(data.sources[part], estimate, average=False))
        f1s.append(f1(data.sources[part], estimate, average=False))
    return np.concatenate(errors), np.concatenate(f1s)


def ratio_interval(errors, reference, seed, level=0.95):
    """Paired-bootstrap ``level`` interval of ``mean(errors) / mean(reference)``.

    ``errors`` and ``reference`` are per-sample rMSE of one method and of the
    reference on the same samples; the samples are resampled together, so the
    interval reflects how much the cell's ratio depends on which samples were drawn.
    """
    from scipy.stats import bootstrap

    def ratio(e, r, axis=-1):
        return e.mean(axis) / r.mean(axis)

    result = bootstrap((np.asarray(errors), np.asarray(reference)), ratio, paired=True,
                       vectorized=True, n_resamples=N_BOOTSTRAP, confidence_level=level,
                       method="percentile", rng=np.random.default_rng(seed))
    interval = result.confidence_interval
    return [float(interval.low), float(interval.high)]


#: the matrix's data: seed SEED + row index
SEED = 5000


def condition_data(n_samples, seed, solvers_for, quick=False, ico3_only=False,
                   verbose=True):
    """The rows of :func:`conditions` with their data: ``(index, row, forward, solvers,
    data)`` for each, ``data`` drawn with seed ``seed + index``.  ``solvers_for(fwd)``
    builds the methods once per forward model; ``ico3_only`` skips the ico4 rows (where
    the ico3 models' regime check solves classically)."""
    singles = single_error_models(verbose)
    cache = {}
    for i, row in enumerate(conditions(quick)):
        label, _, fwd_name, source, params = row
        if ico3_only and not fwd_name.endswith("ico3"):
            continue
        if fwd_name not in cache:
            fwd = load_forward(fwd_name, verbose)
            cache[fwd_name] = (fwd, solvers_for(fwd))
        fwd, solvers = cache[fwd_name]
        yield i, row, fwd, solvers, make_data(source, fwd, params, n_samples, seed + i,
                                              singles)


def run(n_samples, quick=False, verbose=True, models=None):
    e2e = None if quick or models is not None else end_to_end_baseline(verbose)
    rows = {}
    for i, (label, group, fwd_name, _, params), fwd, solvers, data in condition_data(
            n_samples, SEED, lambda fwd: methods(fwd, e2e, models), quick=quick,
            verbose=verbose):
        seed = SEED + i
        start = time.perf_counter()
        preds = {}
        for name, est in solvers.items():
            kwargs = {"noise_var": data.noise_var} if _known(name) else {}
            preds[name] = est.predict(data.sensors, **kwargs)
        ref_errors = rmse(data.sources, preds[REFERENCE], average=False)
        ref_rmse, ref_f1 = float(np.mean(ref_errors)), f1(data.sources, preds[REFERENCE])
        cells = {}
        for name, pred in preds.items():
            errors = rmse(data.sources, pred, average=False)
            value, score = float(np.mean(errors)), f1(data.sources, pred)
            cells[name] = {"rmse": value, "ratio": value / ref_rmse,
                           "ratio_95": ratio_interval(errors, ref_errors, seed),
                           "f1": score, "f1_diff": score - ref_f1}
        rows[label] = {"group": group, "forward": fwd_name, "n_samples": n_samples,
                       "seed": seed, "params": {k: v for k, v in params.items()},
                       "cells": cells}
        if verbose:
            print(f"{label:45s} " + " ".join(f"{n.split(' ')[0][:14]}={c['ratio']:.3f}"
                                             for n, c in cells.items()),
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    return rows


def merge(rows, new_rows):
    """``rows`` (a whole matrix) with the cells of ``new_rows`` (a run with ``models``)
    added where the same seeds drew the same samples (ClassicalCB-25's rMSE agrees);
    returns the merged rows and the labels of the rows left out (their data differ,
    e.g. a head model built anew)."""
    merged, left_out = {}, []
    for label, row in rows.items():
        new = new_rows[label]["cells"]
        old_reference, new_reference = row["cells"][REFERENCE]["rmse"], new[REFERENCE]["rmse"]
        if not np.isclose(old_reference, new_reference, rtol=1e-9, atol=0):
            left_out.append(label)
            merged[label] = row
            continue
        merged[label] = {**row, "cells": {**row["cells"],
                                          **{k: v for k, v in new.items() if k != REFERENCE}}}
    return merged, left_out


def _columns(rows):
    """Every method of the matrix but the reference, in the order the rows hold them."""
    return list(dict.fromkeys(n for row in rows.values() for n in row["cells"]
                              if n != REFERENCE))


def heatmap(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(rows)
    names = _columns(rows)
    ratio = np.full((len(labels), len(names)), np.nan)
    for i, label in enumerate(labels):
        for j, name in enumerate(names):
            if name in rows[label]["cells"]:
                ratio[i, j] = rows[label]["cells"][name]["ratio"]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 4, 0.32 * len(labels) + 2))
    image = ax.imshow(np.log2(ratio), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    for i in range(len(labels)):
        for j in range(len(names)):
            if np.isfinite(ratio[i, j]):
                ax.text(j, i, f"{ratio[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    bar = fig.colorbar(image, ax=ax, fraction=0.03)
    bar.set_label("rMSE / ClassicalCB-25-joint (log2 colour scale)")
    ax.set_title("Robustness matrix: rMSE ratio to ClassicalCB (25 it., joint noise)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(rows, n_samples):
    names = _columns(rows)
    head = "| condition | " + " | ".join(names) + " |"
    lines = [head, "|---|" + "---|" * len(names)]
    for label, row in rows.items():
        cells = []
        for name in names:
            c = row["cells"].get(name)
            cells.append("n/a" if c is None else f"{c['ratio']:.2f} ({c['f1_diff']:+.2f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    worst = {name: max(row["cells"][name]["ratio"] for row in rows.values()
                       if name in row["cells"]) for name in names}
    lines.append("| **worst cell** | " + " | ".join(f"**{worst[n]:.2f}**" for n in names)
                 + " |")
    return "\n".join(lines), worst


#: Ratios within this of 1 are ties: a learned model that solved the row classically
#: (regime check) differs from ClassicalCB by round-off only (1 + 2e-16 seen).
TIE_TOLERANCE = 1e-9


def above_one(rows, names=SHIPPED):
    """Markdown list: each shipped model's (torch) cells above 1.00 (beyond
    ``TIE_TOLERANCE``), with their paired-bootstrap 95 % intervals, and whether the
    interval lies above 1."""
    lines = []
    for name in names:
        cells = [(label, row["cells"][name]) for label, row in rows.items()
                 if name in row["cells"]
                 and row["cells"][name]["ratio"] > 1.0 + TIE_TOLERANCE]
        if not cells:
            lines.append(f"- {name}: none")
            continue
        worse = sum(c["ratio_95"][0] > 1.0 for _, c in cells)
        lines.append(f"- {name}: " + "; ".join(
            f"{label} {c['ratio']:.3f} [{c['ratio_95'][0]:.3f}, {c['ratio_95'][1]:.3f}]"
            for label, c in cells) + f" ({worse} of {len(cells)} with the whole interval above 1)")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-samples", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="4 conditions, no baseline")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--models", nargs="+", default=None, choices=SHIPPED, metavar="MODEL",
                        help="run these shipped models only and add their columns to the "
                             "matrix in results/robustness.json")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    left_out = []
    if args.models:
        previous = json.loads((HERE / "results" / "robustness.json").read_text())
        added = run(previous["n_samples"], models=args.models)
        WORK.mkdir(parents=True, exist_ok=True)
        (WORK / "added.json").write_text(json.dumps(added, default=float))
        rows, left_out = merge(previous["rows"], added)
        args.n_samples = previous["n_samples"]
    else:
        rows = run(args.n_samples, args.quick)
    table, worst = markdown(rows, args.n_samples)
    figure = HERE / "figures" / "robustness.png"
    if args.no_write:
        print(table)
        return
    heatmap(rows, figure)
    timing = (f"{time.perf_counter() - start:.0f} s" if not args.models else
              f"the columns of {', '.join(args.models)} added by `--models` in "
              f"{time.perf_counter() - start:.0f} s, on the same samples"
              + (f"; n/a in {', '.join(left_out)}, whose data drawn again differed"
                 if left_out else ""))
    body = f"""`python -m benchmarks.robustness` ({timing}). Each cell:
rMSE of the method divided by the rMSE of ClassicalCB (25 iterations, joint noise) on the
same {args.n_samples} samples, and in brackets the F1 difference to it (higher is better).
Every method inverts with the nominal template of its cap; the data come from the row's head
model: `perturbed` is the shipped `-perturbed` template (skull x0.5, electrodes jittered
3 mm); single-error rows are one member of the head-model builder with only that error (ico3
BEM, so compare them with "BEM ico3 only"); other rows use the perturbed template with the
paper simulator (5-20 patches, 2-4 mm, 5-20 dB, white noise, T = 100) except what the row
changes. The last four rows are caps that no template ships: the clinical 10-20
system's 19 electrodes, BioSemi's 32 and EGI's HydroCel nets of 128 and 256, built on demand
like the shipped templates (`BUILT_CAPS`; nominal and perturbed, about a minute once). Seeds {SEED} + row index. `deep-cb-known` and `ClassicalCB-25-known` get the true
noise variances. The end-to-end baseline is trained from scratch on the robust simulator
through the head-model ensemble (not the paper/robust mixture of Deep CB's stage 2) with Deep
CB's stage-2 sample budget (24,000 samples); it is tied to the training cap, hence n/a
elsewhere. deep-attn-cb-joint attends over the 64 sources of largest classical update and
went through both stages at Deep CB's budget. deep-graph-cb-joint-ico4 is made for source
spaces about 2x denser than ico3: its regime check solves the ico3 rows classically (ties),
and its corrections act in the ico4 row. The learned models run as `load_pretrained` gives
them: the ico3 models' regime check includes the density check (`zoo.DENSITY_CEILINGS`: a
sample whose learned estimate spreads over more than 10 % of the sources is solved by
ClassicalCB at the same depth). deep-cb-joint-focal is Deep CB trained further on the
paper's focal simulator alone (its card says how far): a focal prior, not a safe one.

{table}

Cells above 1.00 of each shipped model (torch), with the paired-bootstrap 95 % interval of
the ratio ({N_BOOTSTRAP} resamples of the row's {args.n_samples} samples, seed = the row's):

{above_one(rows)}

![robustness matrix](figures/robustness.png)
"""
    write_section("robustness", "Robustness matrix", body,
                  {"n_samples": args.n_samples, "rows": rows, "worst": worst})
    print(table)


if __name__ == "__main__":
    main()
