"""Where do the learned models lose?  The shipped joint-noise models with and without their
noise corrections, on every ico3 condition of the robustness matrix.

    python -m benchmarks.studies.noise_ablation                      # about 2-3 min
    python -m benchmarks.studies.noise_ablation --models deep-cb-joint --n-samples 64
    python -m benchmarks.studies.noise_ablation --files retrained=run/deep-cb-joint.pt

``--files LABEL=PATH`` evaluates model files beside them on the same samples: e.g. Deep CB
trained from scratch without noise corrections, ``unfolded-sbl train deep-cb-joint
--noise-correction none --out run`` (stages 1 and 2) and then ``unfolded-sbl train
deep-cb-joint --noise-correction none --init run/deep-cb-joint.pt --low-snr --epochs 16
--out run3`` (the third stage, as deep-cb-joint's).  Trained that way it loses on 40
patches as the shipped Deep CB does: removing the noise corrections from a model trained
with them pulls it back towards the classical update; it does not remove the cause.

Before the density check (``density_ceiling``), the robustness matrix found the shipped
Deep CB 1.008x ClassicalCB-25 on 40 patches, its only cell above 1.00 with the whole
interval above.  This evaluates each network as shipped, without the density check,
and with its noise corrections removed (``zoo.without_noise_corrections``: the classical
noise update in every layer, the source corrections unchanged) on fresh samples of the
matrix's conditions (seeds 9000 + row, not the matrix's 5000 + row), with a paired
bootstrap interval for every ratio.  Nothing here is shipped.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import unfolded_sbl as us
from benchmarks._results import write_study_section
from benchmarks.robustness import REFERENCE, condition_data, ratio_interval
from unfolded_sbl import zoo
from unfolded_sbl.metrics import f1, rmse

MODELS = ("deep-cb-joint", "deep-graph-cb-joint")
SEED = 9000


def variants(name, fwd):
    """label -> estimator: the model as shipped and without its noise corrections, both
    without the density check (``density_ceiling=None``): this measures the networks."""
    shipped = us.load_pretrained(name, forward=fwd, density_ceiling=None)
    return {"as shipped": shipped, "no noise corrections": zoo.without_noise_corrections(shipped)}


#: variant name of a model file given with ``--files``
TRAINED = "as trained"


def run(models, n_samples, files=None, verbose=True):
    """row -> model -> variant -> [ratio, low, high, F1 difference]; ``files`` (label ->
    model file) are evaluated as models of one variant, :data:`TRAINED`."""
    def solvers_for(fwd):
        learned = {name: variants(name, fwd) for name in models}
        learned.update({label: {TRAINED: us.UnfoldedSBLRegressor.load(
                            path, forward=fwd, density_ceiling=None)}
                        for label, path in (files or {}).items()})
        return us.ClassicalCB(fwd).fit(), learned

    rows = {}
    for i, (label, *_), fwd, (classical, learned), data in condition_data(
            n_samples, SEED, solvers_for, ico3_only=True, verbose=verbose):
        reference = classical.predict(data.sensors)
        ref_errors = rmse(data.sources, reference, average=False)
        ref_f1 = f1(data.sources, reference)
        rows[label] = {}
        for name, ests in learned.items():
            rows[label][name] = {}
            for variant, est in ests.items():
                pred = est.predict(data.sensors)
                errors = rmse(data.sources, pred, average=False)
                low, high = ratio_interval(errors, ref_errors, SEED + i)
                rows[label][name][variant] = [float(np.mean(errors) / np.mean(ref_errors)),
                                              low, high, f1(data.sources, pred) - ref_f1]
        if verbose:
            print(label, {n: {v: round(c[0], 3) for v, c in r.items()}
                          for n, r in rows[label].items()}, flush=True)
    return rows


def describe_files(files):
    """A sentence per ``--files`` model: its label, file and the stages its card lists."""
    import json
    from pathlib import Path

    out = []
    for label, path in files.items():
        card = Path(path).with_suffix(".json")
        stages = ""
        if card.exists():
            record = json.loads(card.read_text())
            stages = "; stages " + ", ".join(
                f"{st['name']} ({st['samples_seen']:,} samples)"
                for st in record["training"]["stages"])
            stages += f"; noise_correction={record['estimator_params']['noise_correction']!r}"
        out.append(f"`{label}` is `{path}` (not shipped{stages}). ")
    return "".join(out)


def report(rows, models):
    first = next(iter(rows.values()))
    columns = [(m, v) for m in models for v in first[m]]
    header = "| condition | " + " | ".join(f"{m}, {v}" for m, v in columns)
    lines = [header + " |", "|---|" + "---|" * len(columns)]
    for label, row in rows.items():
        cells = []
        for m, v in columns:
            ratio, low, high, df1 = row[m][v]
            mark = "**" if low > 1.0 else ""  # the whole interval above 1
            cells.append(f"{mark}{ratio:.3f}{mark} [{low:.3f}, {high:.3f}] ({df1:+.3f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    worst = []
    for m, v in columns:
        label, cell = max(((lb, r[m][v]) for lb, r in rows.items()), key=lambda x: x[1][0])
        above = sum(r[m][v][1] > 1.0 for r in rows.values())
        worst.append(f"- {m}, {v}: worst {label} {cell[0]:.3f} [{cell[1]:.3f}, "
                     f"{cell[2]:.3f}]; conditions with the whole interval above 1.00: "
                     f"{above} of {len(rows)}")
    return "\n".join(lines), "\n".join(worst)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--files", nargs="+", default=[], metavar="LABEL=PATH",
                        help="model files to evaluate beside them")
    parser.add_argument("--n-samples", type=int, default=64)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    files = dict(item.split("=", 1) for item in args.files)
    started = time.perf_counter()
    rows = run(args.models, args.n_samples, files)
    table, worst = report(rows, args.models + list(files))
    models = " ".join(args.models)
    files_arg = "".join(f" {label}={path}" for label, path in files.items())
    body = f"""`python -m benchmarks.studies.noise_ablation --models {models} --n-samples {args.n_samples}\
{" --files" + files_arg if files else ""}` ({time.perf_counter() - started:.0f} s). \
{describe_files(files)}Each model as shipped and without its noise corrections
(`zoo.without_noise_corrections`: the classical noise update in every layer, the source
corrections unchanged), torch, without the density check (`density_ceiling=None`: the
networks themselves; the robustness matrix runs the models as shipped), on {args.n_samples}
fresh samples of every ico3 condition of the robustness matrix (same data recipe, seeds
{SEED} + row instead of 5000 + row). Cells: rMSE
ratio to {REFERENCE} [paired-bootstrap 95 % interval] (F1 difference); bold where the whole
interval is above 1.00. Nothing here is shipped.

{table}

{worst}
"""
    print(body)
    if not args.no_write:
        write_study_section("noise_ablation",
                      "Where the learned models lose: noise corrections and training", body, rows)


if __name__ == "__main__":
    main()
