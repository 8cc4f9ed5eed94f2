"""Does more training close the gap?  Held-out rMSE ratios of Deep CB to ClassicalCB as the
shipped ``deep-cb-joint`` trains further.

    python -m benchmarks.studies.budget                      # both runs, about 25 min each
    python -m benchmarks.studies.budget --runs stage2 --chunks 10

Issue 11 asks the shipped Deep CB for rMSE <= 0.80x ClassicalCB-25 on nominal data and
<= 0.85x on the perturbed template, while never losing to it on any condition; the paper
reaches 0.80x on nominal data after about 10 million training samples on a GPU, the
shipped model saw 37,000 on two CPU cores.  This continues the shipped weights in chunks
and evaluates them after each chunk on fixed held-out sets of the robustness matrix's
conditions, so that the curves show whether the ratios still move with the budget, and
which way:

* ``stage2``: Deep CB's own last stage again (``zoo.ROBUST_STAGE``: classical-relative
  loss, lr 3e-4; the stage-2 mixture with the low-SNR part, through the head-model
  ensemble);
* ``paper``: the paper's simulator alone on the nominal template, with stage 1's loss
  (lr 5e-4): the distribution the paper's numbers come from.

Each chunk is 2 epochs (a fresh optimiser and a cosine schedule over the chunk, so the
runs are warm restarts, not one long schedule); the network after every chunk is kept in
``benchmarks/_work/budget`` and a rerun resumes after the last finished chunk.  Nothing
here is shipped.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import numpy as np

import unfolded_sbl as us
from benchmarks._results import HERE, write_study_section
from unfolded_sbl import zoo
from unfolded_sbl.metrics import f1, rmse
from unfolded_sbl.simulate import ROBUST_SIMULATOR

WORK = HERE / "_work" / "budget"
NAME = "deep-cb-joint"
N_HELD_OUT = 64
EPOCHS_PER_CHUNK = 2
#: run -> (estimator parameters of each chunk, simulator parameters)
RUNS = {
    "stage2": ({**{k: v for k, v in zoo.ROBUST_STAGE.items() if k != "select_best"},
                "steps_per_epoch": 15},
               zoo.robust_simulator_params(low_snr=True)),
    "paper": ({"loss": "relative", "progressive_steps": 0, "learning_rate": 5e-4,
               "steps_per_epoch": 20}, {}),
}
#: held-out condition -> (template, simulator parameters), seeds 33000 + index
HELD_OUT = {
    "nominal": ("biosemi64-ico3", {}),
    "perturbed": ("biosemi64-ico3-perturbed", {}),
    "spread 7-10 mm": ("biosemi64-ico3-perturbed", {"spread": (0.007, 0.010)}),
    "40 patches": ("biosemi64-ico3-perturbed", {"n_patches": (40, 40)}),
    "SNR -10 to 0 dB": ("biosemi64-ico3-perturbed", {"snr_db": (-10.0, 0.0)}),
    "robust simulator": ("biosemi64-ico3-perturbed", dict(ROBUST_SIMULATOR)),
}


@functools.cache
def held_out():
    """condition -> (data, ClassicalCB-25 predictions), fixed for every run and chunk."""
    classical = us.ClassicalCB(forward=zoo.TRAIN_FORWARD, n_iter=25).fit()
    sets = {}
    for i, (label, (template, params)) in enumerate(HELD_OUT.items()):
        data = us.simulate(us.load_forward(template), N_HELD_OUT, random_state=33000 + i,
                           **params)
        sets[label] = (data, classical.predict(data.sensors))
    return sets


def evaluate(est, sets):
    """condition -> [rMSE ratio to ClassicalCB-25, F1 difference]."""
    out = {}
    for label, (data, reference) in sets.items():
        pred = est.predict(data.sensors)
        ratio = np.mean(rmse(data.sources, pred, average=False)) / np.mean(
            rmse(data.sources, reference, average=False))
        out[label] = [round(float(ratio), 4),
                      round(float(f1(data.sources, pred) - f1(data.sources, reference)), 4)]
    return out


def continue_run(run, n_chunks, sets=held_out, verbose=True):
    """Records of the run's chunks (chunk -1: the shipped model), resuming after the last
    finished one; ``sets`` returns the held-out sets (built only when a chunk is trained
    or the shipped model evaluated)."""
    from tqdm.auto import tqdm

    WORK.mkdir(parents=True, exist_ok=True)
    log, model = WORK / f"{run}.jsonl", WORK / f"{run}.pt"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if records and records[-1]["chunk"] >= n_chunks - 1:
        return records[:n_chunks + 1]  # every chunk asked for is logged: nothing to train
    if records and model.exists():
        # the networks alone, as before model files recorded a density ceiling
        est = us.UnfoldedSBLRegressor.load(model, forward=zoo.TRAIN_FORWARD, dtype="float64",
                                           density_ceiling=None)
        # an interrupt between saving the network and logging its chunk: the network's
        # training history says how many chunks it holds (each adds EPOCHS_PER_CHUNK)
        done = (len(est.history_) - records[0]["history"]) // EPOCHS_PER_CHUNK
        records = records[:done + 1]
    else:  # a new run, or the network of the logged chunks is gone: start again
        est = us.UnfoldedSBLRegressor.load(zoo.pretrained_path(NAME),
                                           forward=zoo.TRAIN_FORWARD, dtype="float64",
                                           density_ceiling=None)
        records = [{"chunk": -1, "samples": 0, "seconds": 0.0, "history": len(est.history_),
                    **evaluate(est, sets())}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    params, simulator = RUNS[run]
    # a small internal validation set: the held-out sets are what is reported
    est.set_params(**{**params, "warm_start": True, "max_epochs": EPOCHS_PER_CHUNK,
                      "batch_size": 32, "n_val": 16, "verbose": False,
                      "simulator_params": simulator})
    per_chunk = EPOCHS_PER_CHUNK * params["steps_per_epoch"] * 32
    bar = tqdm(range(records[-1]["chunk"] + 1, n_chunks), desc=f"budget {run}",
               unit="chunk", disable=not verbose)
    for chunk in bar:
        start = time.perf_counter()
        est.set_params(random_state=1000 + chunk).fit_simulated()
        seconds = time.perf_counter() - start
        est.save(model)
        record = {"chunk": chunk, "samples": records[-1]["samples"] + per_chunk,
                  "seconds": round(records[-1]["seconds"] + seconds, 1),
                  **evaluate(est, sets())}
        records.append(record)
        with open(log, "a") as fid:
            fid.write(json.dumps(record) + "\n")
        bar.set_postfix({k: v[0] for k, v in record.items() if k in HELD_OUT})
    return records


def table(records):
    """Rows at the shipped model, after the first chunk, then about every quarter of the
    run; the last row is each condition's best ratio over the trained chunks."""
    picks = sorted({0, min(1, len(records) - 1),
                    *np.linspace(0, len(records) - 1, 5).round().astype(int)})
    lines = ["| samples | training s | " + " | ".join(HELD_OUT) + " |",
             "|---|---|" + "---|" * len(HELD_OUT)]
    for i in picks:
        r = records[i]
        cells = " | ".join(f"{r[k][0]:.3f} ({r[k][1]:+.3f})" for k in HELD_OUT)
        label = "0 (shipped)" if r["chunk"] < 0 else f"{r['samples']:,}"
        lines.append(f"| {label} | {r['seconds']:.0f} | {cells} |")
    trained = records[1:] or records
    best = {k: min(r[k][0] for r in trained) for k in HELD_OUT}
    lines.append("| best over the chunks | | " + " | ".join(f"{best[k]:.3f}" for k in HELD_OUT)
                 + " |")
    return "\n".join(lines)


def feasible(records):
    """How many trained chunks meet issue 11's every-condition criterion (all ratios
    <= 1.00), and the best nominal ratio among them."""
    ok = [r for r in records[1:] if all(r[k][0] <= 1.0 for k in HELD_OUT)]
    line = f"Chunks with every condition <= 1.00: {len(ok)} of {len(records) - 1}"
    if ok:
        best = min(ok, key=lambda r: r["nominal"][0])
        line += (f"; the best nominal ratio among them {best['nominal'][0]:.3f} "
                 f"(perturbed {best['perturbed'][0]:.3f}, after {best['samples']:,} samples)")
    return line + "."


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--chunks", type=int, default=30, help="chunks per run")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    results = {run: continue_run(run, args.chunks) for run in args.runs}
    training_s = sum(records[-1]["seconds"] for records in results.values())
    sections = []
    for run, records in results.items():
        params = RUNS[run][0]
        sections.append(f"**{run}** ({params['loss']} loss, lr {params['learning_rate']:g}, "
                        f"{EPOCHS_PER_CHUNK * params['steps_per_epoch'] * 32} samples per "
                        f"chunk)\n\n{table(records)}\n\n{feasible(records)}")
    body = f"""`python -m benchmarks.studies.budget --chunks {args.chunks}` ({training_s / 60:.0f} min of \
training, resumable: every chunk's network and record are kept in `benchmarks/_work/budget`,
and a rerun trains only the chunks not yet logged). The shipped `{NAME}` trained
further, in chunks of {EPOCHS_PER_CHUNK} epochs (batch 32, a fresh optimiser and cosine schedule
per chunk), on its own stage-2 mixture (`stage2`) or on the paper's simulator alone on the
nominal template (`paper`). Cells: rMSE ratio to ClassicalCB-25-joint (F1 difference) on
{N_HELD_OUT} held-out samples per condition (seeds 33000 + column; conditions as in the robustness
matrix, from the perturbed template except `nominal`). Issue 11 asks for nominal <= 0.80,
perturbed <= 0.85 and every condition <= 1.00 at once. Nothing here is shipped.

{(chr(10) * 2).join(sections)}
"""
    print(body)
    if not args.no_write:
        write_study_section("budget", "Training budget: more of the same training", body, results)


if __name__ == "__main__":
    main()
