"""Reproduce the paper's table 3 and figures 2, 4, 5, 7 and 8 with one command.

    python -m benchmarks.paper --budget small      # < 15 min on 2 CPU cores
    python -m benchmarks.paper --budget full       # the shipped models' budgets
    python -m benchmarks.paper --budget tiny --out /tmp/x   # smoke run (tests)

Trains (or loads from the cache in ``<out>/_work/<budget>``) every learned model
for each seed, simulates held-out data with the *perturbed* template of each
setting (skull conductivity x0.5, electrodes jittered by 3 mm) while every
method inverts with the nominal template, evaluates, and writes the ``paper``
section of ``<out>/RESULTS.md``, ``<out>/results/paper.json`` and
``<out>/figures/paper_*.png``.  Training is checkpointed: an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import unfolded_sbl as us
from benchmarks import _paper_figures as figures
from benchmarks._results import HERE, matmul_peak, write_section
from benchmarks.bench_onnx import median_per_sample
from unfolded_sbl.evaluation import evaluate
from unfolded_sbl.zoo import PRESETS, TRAIN_FORWARD, model_card


@dataclass(frozen=True)
class Setting:
    key: str
    title: str
    forward: str
    n_times: int
    seed: int


SETTINGS = (
    Setting("train", "1. training cap (biosemi64), ico3, T = 100", "biosemi64-ico3", 100, 1000),
    Setting("things_ico3", "2. 63-channel cap (THINGS-EEG2 layout), ico3, T = 600",
            "things63-ico3", 600, 2000),
    Setting("things_ico4", "3. 63-channel cap, ico4 (5124 sources), zero-shot, T = 100",
            "things63-ico4", 100, 3000),
)

#: learned method -> (estimator kind, parameters other than the budget)
LEARNED = {
    "DeepSIF-like (end-to-end)": ("end_to_end", {"hidden": 256}),
    "Bias CB known": ("unfolded", {"correction": "bias", "noise_correction": "none",
                                   "learn_noise": False}),
    "Bias CB joint": ("unfolded", {"correction": "bias", "noise_correction": "bias",
                                   "learn_noise": True}),
    "Deep CB known": ("unfolded", {"correction": "mlp", "noise_correction": "none",
                                   "learn_noise": False}),
    "Deep CB joint": ("unfolded", {"correction": "mlp", "noise_correction": "mlp",
                                   "learn_noise": True}),
    "Deep Graph CB joint": ("unfolded", {"correction": "graph", "noise_correction": "mlp",
                                         "learn_noise": True}),
    # attention over the 64 sources of largest classical update (as the shipped model):
    # global attention costs about 5x more per training step on a CPU
    "Deep Attn CB known": ("unfolded", {"correction": "attention", "attention_keys": 64,
                                        "noise_correction": "none", "learn_noise": False}),
    "Deep Attn CB joint": ("unfolded", {"correction": "attention", "attention_keys": 64,
                                        "noise_correction": "mlp", "learn_noise": True}),
}
#: learned method -> shipped model trained with the full budget, seed 0
SHIPPED = {"Deep CB known": "deep-cb-known", "Deep CB joint": "deep-cb-joint",
           "Deep Graph CB joint": "deep-graph-cb-joint", "Deep Attn CB joint": "deep-attn-cb-joint"}
#: models tied to the training cap's channel and source counts
TIED = ("DeepSIF-like (end-to-end)", "Bias CB known", "Bias CB joint")


def _budget_params(kind, method, budget):
    """Training parameters of ``method`` under ``budget``."""
    attention = "Attn" in method
    if budget == "tiny":
        if kind == "end_to_end":
            return {"max_epochs": 1, "steps_per_epoch": 1, "batch_size": 2}
        return {"max_epochs": 1, "steps_per_epoch": 1, "progressive_steps": 0,
                "batch_size": 2, "n_val": 0}
    if budget == "small":
        if kind == "end_to_end":
            return {"max_epochs": 4, "steps_per_epoch": 10, "batch_size": 32,
                    "learning_rate": 1e-3}
        return {"max_epochs": 3, "steps_per_epoch": 4, "progressive_steps": 0,
                "batch_size": 16, "learning_rate": 3e-3, "n_val": 16}
    # full: the shipped presets; the others get budgets of the same kind
    if kind == "end_to_end":  # as many samples as Deep CB joint's joint phase
        return {"max_epochs": 16, "steps_per_epoch": 20, "batch_size": 32,
                "learning_rate": 1e-3}
    if method in SHIPPED or attention:  # known-noise attention: the joint preset
        preset = PRESETS[SHIPPED.get(method, "deep-attn-cb-joint")]
        return {k: v for k, v in preset.items()
                if k not in ("correction", "noise_correction", "learn_noise", "attention_keys")}
    return {"max_epochs": 4, "steps_per_epoch": 20, "progressive_steps": 2,
            "batch_size": 32, "learning_rate": 2e-3}


@dataclass
class Budget:
    name: str
    n_eval: tuple
    seeds: tuple
    n_curve: int
    attention_at_ico4: bool
    speed_repeats: int
    shipped_rows: bool = True


BUDGETS = {
    "tiny": Budget("tiny", (4, 3, 2), (0, 1), 3, False, 1),
    "small": Budget("small", (100, 40, 16), (0, 1, 2), 16, False, 2),
    "full": Budget("full", (1000, 1000, 1000), (0, 1, 2), 100, True, 3, shipped_rows=False),
}

#: paper table 3 (Train Cap / Things Cap Ico3 / Things Cap Ico4): rMSE, EMD (m), F1, LE (m),
#: time (s per sample, A100).  Bias CB on the Things cap was retrained there; not here.
PAPER = {
    "train": {
        "ClassicalCB known": (0.410, 0.0122, 0.535, 0.0056, 0.0048),
        "ClassicalCB joint": (0.434, 0.0130, 0.522, 0.0060, 0.0046),
        "sLORETA": (24.373, 0.0291, 0.038, 0.0251, 0.0010),
        "DeepSIF-like (end-to-end)": (0.796, 0.0403, 0.331, 0.0104, 0.0003),
        "Bias CB known": (0.383, 0.0115, 0.553, 0.0054, 0.0025),
        "Bias CB joint": (0.386, 0.0115, 0.548, 0.0054, 0.0047),
        "Deep CB known": (0.344, 0.0105, 0.594, 0.0048, 0.0027),
        "Deep CB joint": (0.348, 0.0108, 0.588, 0.0048, 0.0063),
        "Deep Attn CB known": (0.323, 0.0102, 0.608, 0.0045, 0.0071),
        "Deep Attn CB joint": (0.332, 0.0103, 0.600, 0.0046, 0.0090),
    },
    "things_ico3": {
        "ClassicalCB known": (0.384, 0.0127, 0.722, 0.0056, 0.0030),
        "ClassicalCB joint": (0.408, 0.0135, 0.703, 0.0060, 0.0062),
        "sLORETA": (64.609, 0.0302, 0.024, 0.0239, 0.0009),
        "Deep CB known": (0.556, 0.0125, 0.683, 0.0067, 0.0022),
        "Deep CB joint": (0.393, 0.0131, 0.745, 0.0056, 0.0049),
        "Deep Attn CB known": (0.334, 0.0117, 0.765, 0.0048, 0.0036),
        "Deep Attn CB joint": (0.351, 0.0120, 0.754, 0.0051, 0.0056),
    },
    "things_ico4": {
        "ClassicalCB known": (1.182, 0.0170, 0.286, 0.0111, 0.0264),
        "ClassicalCB joint": (1.188, 0.0177, 0.270, 0.0115, 0.0442),
        "sLORETA": (83.035, 0.0267, 0.023, 0.0265, 0.0101),
        "Deep CB known": (1.092, 0.0154, 0.287, 0.0093, 0.0285),
        "Deep CB joint": (1.078, 0.0153, 0.282, 0.0094, 0.0591),
        "Deep Attn CB known": (1.122, 0.0148, 0.313, 0.0084, 0.0714),
        "Deep Attn CB joint": (1.184, 0.0156, 0.296, 0.0090, 0.0978),
    },
}
METRICS = ("rmse", "emd", "f1", "le", "ms_per_sample")


# -- training ---------------------------------------------------------------------------
def train_models(budget, work_dir, verbose=True):
    """Train (or load from ``work_dir``) every learned method for every seed.

    Returns
    -------
    models : dict of method -> dict of seed -> (kind, path or fitted estimator)
    budgets : dict of method -> {"params": ..., "seconds": [per seed]}
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    models, budgets = {}, {}
    for method, (kind, params) in LEARNED.items():
        train_params = _budget_params(kind, method, budget.name)
        budgets[method] = {"params": train_params, "seconds": []}
        models[method] = {}
        for seed in budget.seeds:
            start = time.perf_counter()
            if budget.name == "full" and seed == 0 and method in SHIPPED:
                # the shipped model is this preset trained from seed 0
                models[method][seed] = ("shipped", SHIPPED[method])
                seconds = us.zoo.model_card(SHIPPED[method])["training"]["seconds"]
            elif kind == "end_to_end":
                est = us.EndToEndRegressor(TRAIN_FORWARD, random_state=seed, verbose=verbose,
                                           **params, **train_params).fit_simulated()
                models[method][seed] = ("fitted", est)
                seconds = est.train_seconds_
            else:
                slug = method.lower().replace(" ", "-")
                path = work_dir / f"{slug}-seed{seed}.pt"
                if path.exists():
                    seconds = float(np.load(path.with_suffix(".seconds.npy")))
                else:
                    if verbose:
                        print(f"training {method}, seed {seed}: {train_params}")
                    est = us.UnfoldedSBLRegressor(
                        TRAIN_FORWARD, random_state=seed, verbose=verbose,
                        checkpoint=str(path.with_suffix(".ckpt")), **params,
                        **train_params).fit_simulated()
                    est.save(path)
                    seconds = est.train_seconds_
                    np.save(path.with_suffix(".seconds.npy"), seconds)
                models[method][seed] = ("file", path)
            budgets[method]["seconds"].append(float(seconds))
            if verbose:
                print(f"{method}, seed {seed}: {seconds:.1f} s of training "
                      f"({time.perf_counter() - start:.1f} s here)")
    return models, budgets


def _instantiate(entry, forward):
    """An estimator of a trained entry, bound to ``forward``."""
    how, obj = entry
    if how == "shipped":
        return us.load_pretrained(obj, forward=forward)
    if how == "file":
        return us.UnfoldedSBLRegressor.load(obj, forward=forward)
    return obj  # fitted end-to-end model (training forward only)


# -- evaluation -------------------------------------------------------------------------
def _score(est, data, forward, known):
    """Metrics of one estimator, predicting 32 samples at a time (memory at ico4)."""
    kwargs = {"est": {"noise_var": data.noise_var}} if known else {}
    return evaluate({"est": est}, data, forward, kwargs, chunk_size=32)["est"]


def evaluate_setting(setting, models, budget, verbose=True):
    """Rows ``method -> [metrics per seed]`` for one setting."""
    fwd = us.load_forward(setting.forward)
    n_eval = budget.n_eval[[s.key for s in SETTINGS].index(setting.key)]
    data = us.simulate(f"{setting.forward}-perturbed", n_eval, random_state=setting.seed,
                       n_times=setting.n_times)
    rows = {
        "sLORETA": [_score(us.SLORETA(fwd).fit(), data, fwd, False)],
        "ClassicalCB known": [_score(us.ClassicalCB(fwd, noise="known").fit(), data, fwd,
                                     True)],
        "ClassicalCB joint": [_score(us.ClassicalCB(fwd).fit(), data, fwd, False)],
    }
    skipped = {}
    for method, per_seed in models.items():
        if setting.forward != TRAIN_FORWARD and method in TIED:
            skipped[method] = "tied to the training cap's channel and source counts"
            continue
        if ("Attn" in method and setting.key == "things_ico4" and not budget.attention_at_ico4
                and _global_attention(per_seed)):
            skipped[method] = ("global attention over 5124 sources costs ~2 s per sample on 2 "
                               "CPU cores: evaluated under --budget full only")
            continue
        known = method.endswith("known")
        rows[method] = []
        for entry in per_seed.values():
            rows[method].append(_score(_instantiate(entry, fwd), data, fwd, known))
        if budget.shipped_rows and method in SHIPPED:
            rows[f"{method} (shipped)"] = [_score(us.load_pretrained(SHIPPED[method], fwd),
                                                  data, fwd, known)]
        if verbose:
            print(f"{setting.key}: {method} done")
    if budget.shipped_rows:
        # shipped models made for this source density (e.g. ico4), trained at ico3 only
        for name in us.zoo.DENSER:
            if us.zoo.suits(name, fwd):
                rows[f"{name} (shipped)"] = [_score(us.load_pretrained(name, fwd), data, fwd,
                                                    False)]
    return rows, skipped, n_eval


def _cell(values, digits):
    if np.all(np.isnan(values)):  # sLORETA's standardised output has no rMSE
        return "n/a"
    mean = np.mean(values)
    text = f"{mean:.{digits}f}" if abs(mean) < 1e3 else f"{mean:.3g}"
    if len(values) > 1:
        text += f" ± {np.std(values, ddof=1):.{digits}f}"
    return text


def format_setting(key, rows):
    """Markdown table: ours (mean ± sd over seeds) beside the paper's table 3."""
    header = ("| method | seeds | rMSE | EMD (mm) | F1 | LE (mm) | ms / sample | "
              "paper rMSE | paper EMD (mm) | paper F1 | paper LE (mm) | paper ms |")
    lines = [header, "|" + "---|" * 12]
    for method, per_seed in rows.items():
        cols = {m: [r[m] for r in per_seed] for m in METRICS}
        paper = PAPER[key].get(method.replace(" (shipped)", ""))
        ours = [_cell(cols["rmse"], 3), _cell(1e3 * np.array(cols["emd"]), 1),
                _cell(cols["f1"], 3), _cell(1e3 * np.array(cols["le"]), 1),
                _cell(cols["ms_per_sample"], 1)]
        theirs = (["-"] * 5 if paper is None or "(shipped)" in method else
                  [f"{paper[0]:.3f}", f"{1e3 * paper[1]:.1f}", f"{paper[2]:.3f}",
                   f"{1e3 * paper[3]:.1f}", f"{1e3 * paper[4]:.1f}"])
        lines.append(f"| {method} | {len(per_seed)} | " + " | ".join(ours + theirs) + " |")
    return "\n".join(lines)


def _gain(rows, method, base="ClassicalCB joint"):
    if method not in rows:
        return None
    ours = np.mean([r["rmse"] for r in rows[method]])
    f1 = np.mean([r["f1"] for r in rows[method]])
    b = rows[base][0]
    return 100 * (ours / b["rmse"] - 1), 100 * (f1 / b["f1"] - 1)


# -- speed ------------------------------------------------------------------------------
def network_flops(est, X):
    """FLOPs per sample of one network forward as ``predict`` runs it (on the data's
    row space when T > N, then mapped back), counted by torch's FlopCounterMode
    (matrix products only; the Cholesky factorisations add ~N^3/3 per layer)."""
    from torch.utils.flop_counter import FlopCounterMode

    Y, noise, _, _ = est._network_inputs(X, None, True)
    data, expand = est._on_row_space(Y)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = est.network_(est._tensor(data), est._tensor(est.lead_field_), noise)
        expand(out["sources"])
    return counter.get_total_flops() / len(X)


def speed_section(repeats):
    fwd = us.load_forward()
    data = us.simulate(fwd, 64, random_state=0)
    threads = torch.get_num_threads()
    estimators = {
        "ClassicalCB joint (float64)": us.ClassicalCB(fwd).fit(),
        "ClassicalCB joint (float32)": us.ClassicalCB(fwd, dtype="float32").fit(),
        "Deep CB joint, torch": us.load_pretrained("deep-cb-joint", fwd),
        "Deep CB joint, onnxruntime": us.load_pretrained(
            "deep-cb-joint", fwd, backend="onnx", intra_op_num_threads=threads),
    }
    times = {}
    for batch in (1, 64):  # the estimators take turns
        medians = median_per_sample({name: (est, {}) for name, est in estimators.items()},
                                    data.sensors[:batch], repeats * (8 if batch == 1 else 1))
        times.update({(name, batch): t for name, t in medians.items()})
    flops = network_flops(estimators["Deep CB joint, torch"], data.sensors[:4])
    peak = matmul_peak()
    base = times[("Deep CB joint, torch", 64)]
    lines = ["| method | batch 1, ms / sample | batch 64, ms / sample | batch 64 vs torch "
             "Deep CB |", "|---|---|---|---|"]
    for name in estimators:
        lines.append(f"| {name} | {times[(name, 1)]:.1f} | {times[(name, 64)]:.1f} | "
                     f"x{base / times[(name, 64)]:.2f} |")
    achieved = flops / (base / 1e3) / 1e9
    text = "\n".join(lines) + (
        f"\n\nDeep CB joint: {flops / 1e6:.0f} MFLOP per sample (64 x 1284, T = 100 run on "
        f"the data's 64-column row space, 25 layers; torch's FlopCounterMode, matrix "
        f"products only). Measured float32 "
        f"matrix-multiply peak of this machine: {peak:.0f} GFLOP/s ({threads} threads); torch "
        f"Deep CB at batch 64 runs at {achieved:.1f} GFLOP/s, {100 * achieved / peak:.0f} % "
        f"of that peak (the rest: element-wise log/exp, Cholesky, small-matrix overheads).")
    payload = {"ms_per_sample": {f"{n} | batch {b}": t for (n, b), t in times.items()},
               "flops_per_sample": flops, "matmul_peak_gflops": peak}
    return text, payload


# -- report -----------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="folder of RESULTS.md, results/ and figures/ (default: benchmarks)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    budget = BUDGETS[args.budget]
    verbose = not args.quiet
    out = args.out
    (out / "figures").mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()

    models, budgets = train_models(budget, out / "_work" / budget.name, verbose)
    train_wall = time.perf_counter() - clock
    results, skipped, n_evals = {}, {}, {}
    for setting in SETTINGS:
        results[setting.key], skipped[setting.key], n_evals[setting.key] = evaluate_setting(
            setting, models, budget, verbose)
    eval_wall = time.perf_counter() - clock - train_wall

    deepsif = models["DeepSIF-like (end-to-end)"][budget.seeds[0]]
    factories = {
        "sLORETA": lambda fwd: us.SLORETA(fwd).fit(),
        "ClassicalCB joint": lambda fwd: us.ClassicalCB(fwd).fit(),
        "DeepSIF-like": lambda fwd: _instantiate(deepsif, fwd),
        "Deep CB joint": lambda fwd: us.load_pretrained("deep-cb-joint", fwd),
        "Deep Attn CB joint": lambda fwd: us.load_pretrained("deep-attn-cb-joint", fwd),
    }
    figure_notes = figures.make_all(out / "figures", factories, budget.n_curve, verbose)
    speed_text, speed_payload = speed_section(budget.speed_repeats)
    total = time.perf_counter() - clock

    body = _report(args.budget, budget, budgets, results, skipped, n_evals, figure_notes,
                   speed_text, (train_wall, eval_wall, total))
    payload = {"budget": args.budget, "seeds": budget.seeds, "n_eval": n_evals,
               "training": budgets, "results": results, "skipped": skipped,
               "speed": speed_payload, "wall_seconds": total}
    write_section("paper", "Paper reproduction: table 3 and figures", body, payload, root=out)
    if verbose:
        print(f"wrote {out / 'RESULTS.md'} in {total / 60:.1f} min")
    return payload


def _report(name, budget, budgets, results, skipped, n_evals, figure_notes, speed_text,
            walls):
    import mne
    import onnxruntime
    import sklearn

    train_wall, eval_wall, total = walls
    budget_lines = "\n".join(
        f"- {method}: {_budget_text(info['params'])}; {np.mean(info['seconds']):.0f} s of "
        f"training per seed" for method, info in budgets.items())
    tables = []
    for setting in SETTINGS:
        notes = "".join(f"\n- {m}: not run ({why})" for m, why in skipped[setting.key].items())
        tables.append(f"### {setting.title}\n\n{n_evals[setting.key]} held-out samples from "
                      f"`{setting.forward}-perturbed` (seed {setting.seed}); methods invert "
                      f"with `{setting.forward}`.\n\n"
                      f"{format_setting(setting.key, results[setting.key])}\n{notes}\n")
    gains = []
    for method in ("Bias CB joint", "Deep CB joint", "Deep Attn CB joint",
                   "Deep CB joint (shipped)", "Deep Attn CB joint (shipped)"):
        for setting in SETTINGS:
            g = _gain(results[setting.key], method)
            if g is not None:
                gains.append(f"| {method} | {setting.key} | {g[0]:+.1f} % | {g[1]:+.1f} % |")
    paper_gains = "Deep CB joint -19.8 % / +12.6 %, Deep Attn CB joint -23.5 % / +14.9 %"
    figure_list = "\n".join(f"![{title}](figures/{fname})\n\n{caption}\n"
                            for fname, title, caption in figure_notes)
    return f"""`python -m benchmarks.paper --budget {name}` regenerates this section, its
figures (`benchmarks/figures/paper_*.png`) and `benchmarks/results/paper.json`.
Wall time of this run: {total / 60:.1f} min (training {train_wall / 60:.1f}, table
{eval_wall / 60:.1f}, figures and speed {(total - train_wall - eval_wall) / 60:.1f}).

Machine and versions: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU;
Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__},
scikit-learn {sklearn.__version__}, mne {mne.__version__}, onnxruntime
{onnxruntime.__version__}.

**Budget `{name}`** - training seeds {list(budget.seeds)}; every learned model trains on
fresh samples streamed from the simulator (biosemi64-ico3, T = 100, 5-20 patches of
2-4 mm, per-sensor SNR 5-20 dB):

{budget_lines}

{_full_note(name)}Rows marked *(shipped)* are the models in `exported_models/`, trained once (seed 0) with
the full budget (see their model cards); under `--budget full` they are the seed-0 rows.
Cells are mean ± standard deviation over seeds. The paper's columns are its table 3 (its own
simulator and head model, A100 GPU, 100 epochs x 100,000 samples): compare *gains over
ClassicalCB joint* rather than absolute values, since the two simulations differ.

{chr(10).join(tables)}

Relative change against ClassicalCB joint (25 iterations) in the same setting (paper,
training cap: {paper_gains}):

| method | setting | rMSE | F1 |
|---|---|---|---|
{chr(10).join(gains)}

#### Where this falls short of the paper, and why

{_measured_gaps(results, budget)}
- **Training budget.** The paper trains each model 100 epochs x 100,000 samples on an A100
  (3-15 GPU hours). {_shipped_budget()};
  under `--budget small` the per-seed models see a few hundred samples, so their rows sit
  close to ClassicalCB and mainly check the pipeline and the seed spread. Deep Attn CB attends
  over the 64 sources of largest classical update (global attention costs ~5x more per
  training step than that on a CPU), so that it trains at Deep CB's budget.
- **Absolute numbers.** Our held-out data come from a *perturbed* head model (skull
  conductivity x0.5 and 3 mm electrode jitter), so every method pays a model-error cost that
  the paper's nominal-model numbers do not contain; ClassicalCB on nominal data gives rMSE
  about 0.42 (section "Classical solvers"), close to the paper's 0.434.
- **sLORETA rMSE.** Its standardized output is not in source units, hence rMSE in the
  millions here and 24-83 in the paper: read its EMD, F1 and LE.
- **DeepSIF-like baseline.** A spatial MLP + temporal convolution trained on the same
  simulator, not the authors' DeepSIF (which adds an LSTM and trains to convergence for 8
  GPU hours); like DeepSIF and Bias CB it is tied to the training cap, so it has no row in
  settings 2 and 3.
- **Bias CB on the THINGS cap.** The paper retrains it for that cap; here it stays tied to
  the training cap (the point of the comparison is which models transfer without retraining).

#### Figures

{figure_list}

#### Speed (torch networks in float64, their default; the shipped ONNX graph with float32 products, `zoo.ONNX_DTYPE`; {torch.get_num_threads()} threads)

{speed_text}
"""


#: paper table 3 gains of the joint models over ClassicalCB joint (rMSE %, F1 %)
PAPER_GAINS = {
    (key, method): (100 * (PAPER[key][method][0] / PAPER[key]["ClassicalCB joint"][0] - 1),
                    100 * (PAPER[key][method][2] / PAPER[key]["ClassicalCB joint"][2] - 1))
    for key in PAPER for method in ("Deep CB joint", "Deep Attn CB joint")}


def _measured_gaps(results, budget):
    """One line per (model, setting): our gain over ClassicalCB joint beside the paper's."""
    lines = []
    for method in ("Deep CB joint", "Deep Attn CB joint"):
        row = method if budget.name == "full" else f"{method} (shipped)"
        for setting in SETTINGS:
            ours = _gain(results[setting.key], row)
            if ours is None:
                continue
            paper = PAPER_GAINS[(setting.key, method)]
            lines.append(f"- {row}, {setting.key}: rMSE {ours[0]:+.1f} % and F1 "
                         f"{ours[1]:+.1f} % against ClassicalCB joint; paper "
                         f"{paper[0]:+.1f} % and {paper[1]:+.1f} %.")
    row = "Deep CB joint" if budget.name == "full" else "Deep CB joint (shipped)"
    ico4 = _gain(results["things_ico4"], row)
    if ico4 is not None and ico4[0] > 0:
        emd = np.mean([r["emd"] for r in results["things_ico4"][row]])
        base = results["things_ico4"]["ClassicalCB joint"][0]["emd"]
        lines.append(
            f"- **ico4 zero-shot.** Deep CB is worse than ClassicalCB in rMSE at ico4 "
            f"({ico4[0]:+.1f} %) while its EMD changes by {100 * (emd / base - 1):+.1f} %; "
            "the paper reports a gain. Not investigated here; a plausible cause is that the "
            "per-source corrections were learned where a 2-4 mm patch covers a handful of "
            "ico3 sources and it covers 4x as many at ico4, so the learned sparsification "
            "is too strong there (the paper's models saw 100x more data).")
    return "\n".join(lines)


def _shipped_budget():
    """The shipped models' training budget, from their model cards."""
    samples, minutes = [], []
    for name in us.list_pretrained():
        training = model_card(name)["training"]
        samples.append(training["samples_seen"])
        minutes.append(training["seconds"] / 60)
    return (f"The shipped models saw {min(samples):,}-{max(samples):,} samples "
            f"({min(minutes):.0f}-{max(minutes):.0f} min on 2 CPU cores, all stages; "
            "see their model cards)")


def _global_attention(per_seed):
    """Whether any model of this method attends over every source (O(M^2))."""
    return any(getattr(_instantiate(entry, TRAIN_FORWARD), "attention_keys", 0) is None
               for entry in per_seed.values())


def _full_note(name):
    if name == "full":
        return ""
    return ("`--budget full` (the shipped presets for 3 seeds each, 1,000 samples per "
            "setting) was not run for this report: by the per-step and per-sample times "
            "measured here it takes about 8 hours on this 2-core machine, most of it "
            "attention over 5124 sources at ico4.\n\n")


def _budget_text(params):
    steps = params.get("max_epochs", 0) * params.get("steps_per_epoch", 0)
    text = f"{steps} steps x batch {params.get('batch_size')}"
    if params.get("progressive_steps"):
        text += f" + {params['progressive_steps']} progressive steps per layer"
    return text


if __name__ == "__main__":
    main()
