"""Does the learned gain grow with far more training?  Deep CB trained on a GPU for a
fixed wall-clock budget, in resumable chunks, scored like the training-budget study.

    python -m benchmarks.studies.gpu_budget --minutes 8            # on a CUDA GPU
    python -m benchmarks.studies.gpu_budget --recipe paper --minutes 8
    python -m benchmarks.studies.gpu_budget --dry-run             # every path, CPU, tiny

The shipped ``deep-cb-joint`` saw about 45,000 training samples on two CPU cores; the
paper's models saw millions.  This continues the shipped weights with large batches on
the GPU until ``--minutes`` are spent (the held-out scoring after each chunk included),
printing samples per second, so that a GPU lent for a few minutes trains at 20x the
shipped budget or more.  Each chunk's network and record go to
``benchmarks/_work/gpu_budget/RECIPE``: a rerun (a new lease) resumes after the last
logged chunk.  Recipes: ``stage2`` (Deep CB's own stage 2: classical-relative loss on its
training mixture, without the head-model ensemble unless ``--ensemble``: building it
takes minutes of CPU) and ``paper`` (the paper's simulator alone, the focal prior).
Held-out sets, scores and the table are the training-budget study's
(:mod:`benchmarks.studies.budget`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import unfolded_sbl as us
from benchmarks._results import HERE, write_study_section
from benchmarks.studies import budget
from unfolded_sbl import zoo

WORK = HERE / "_work" / "gpu_budget"


def recipe(name, ensemble=False):
    """(estimator parameters, simulator parameters) of a recipe's chunks."""
    if name == "paper":
        return {"loss": "relative", "progressive_steps": 0, "learning_rate": 5e-4}, {}
    mixture = zoo.robust_simulator_params(low_snr=True)
    if not ensemble:
        mixture = [{k: v for k, v in part.items() if k != "head_models"} for part in mixture]
    params = {k: v for k, v in zoo.ROBUST_STAGE.items() if k not in ("select_best",
                                                                      "n_val")}
    return params, mixture


def train(recipe_name, minutes, device, batch_size, steps, epochs_per_chunk, held_out,
          ensemble=False, verbose=True, work=WORK):
    """Records of the run's chunks (chunk -1: the shipped model), resuming after the last
    logged chunk, until ``minutes`` of wall clock are spent in this call."""
    work = work / recipe_name
    work.mkdir(parents=True, exist_ok=True)
    log, model = work / "chunks.jsonl", work / "model.pt"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if records and model.exists():
        est = us.UnfoldedSBLRegressor.load(model, forward=zoo.TRAIN_FORWARD, dtype="float32",
                                           device=device, density_ceiling=None)
    else:
        est = us.UnfoldedSBLRegressor.load(zoo.pretrained_path(budget.NAME),
                                           forward=zoo.TRAIN_FORWARD, dtype="float32",
                                           device=device, density_ceiling=None)
        records = [{"chunk": -1, "samples": 0, "seconds": 0.0,
                    **budget.evaluate(est, held_out())}]
        log.write_text(json.dumps(records[0]) + "\n")
    params, simulator = recipe(recipe_name, ensemble)
    est.set_params(**{**params, "warm_start": True, "max_epochs": epochs_per_chunk,
                      "steps_per_epoch": steps, "batch_size": batch_size, "n_val": 0,
                      "verbose": False, "simulator_params": simulator})
    per_chunk = epochs_per_chunk * steps * batch_size
    deadline = time.perf_counter() + 60 * minutes
    first = records[-1]["chunk"] + 1
    # one chunk at least per call, then as many as the time allows
    while records[-1]["chunk"] < first or time.perf_counter() < deadline:
        chunk = records[-1]["chunk"] + 1
        start = time.perf_counter()
        est.set_params(random_state=2000 + chunk).fit_simulated()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        est.save(model)
        record = {"chunk": chunk, "samples": records[-1]["samples"] + per_chunk,
                  "seconds": round(records[-1]["seconds"] + seconds, 1),
                  "samples_per_s": round(per_chunk / seconds, 1),
                  **budget.evaluate(est, held_out())}
        records.append(record)
        with open(log, "a") as fid:
            fid.write(json.dumps(record) + "\n")
        if verbose:
            print(f"chunk {chunk}: {record['samples']:,} samples, "
                  f"{record['samples_per_s']:.0f} samples/s, nominal "
                  f"{record['nominal'][0]:.3f}, spread 7-10 mm "
                  f"{record['spread 7-10 mm'][0]:.3f}", flush=True)
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=["stage2", "paper"], default="stage2")
    parser.add_argument("--minutes", type=float, default=8.0,
                        help="wall clock to train in this call (default: 8)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50, help="steps per epoch")
    parser.add_argument("--epochs-per-chunk", type=int, default=2)
    parser.add_argument("--ensemble", action="store_true",
                        help="stage2 through the head-model ensemble (built once, minutes)")
    parser.add_argument("--dry-run", action="store_true",
                        help="every path on the CPU with tiny sizes; nothing written to "
                             "RESULTS")
    args = parser.parse_args(argv)
    if args.dry_run:
        fwd = us.load_forward(zoo.TRAIN_FORWARD)
        classical = us.ClassicalCB(fwd, n_iter=25).fit()

        def tiny_held_out():
            sets = {}
            for i, (label, (template, params)) in enumerate(budget.HELD_OUT.items()):
                data = us.simulate(us.load_forward(template), 2, random_state=33000 + i,
                                   **params)
                sets[label] = (data, classical.predict(data.sensors))
            return sets

        with tempfile.TemporaryDirectory() as tmp:
            records = train(args.recipe, minutes=0.0, device="cpu", batch_size=2, steps=1,
                            epochs_per_chunk=1, held_out=tiny_held_out, work=Path(tmp))
        print(f"dry run ({args.recipe}): {len(records) - 1} chunk(s), "
              f"{records[-1]['samples_per_s']} samples/s on the CPU")
        print(budget.table(records))
        return records
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing trained (use --dry-run to exercise the script)")
        return None
    records = train(args.recipe, args.minutes, "cuda", args.batch_size, args.steps,
                    args.epochs_per_chunk, budget.held_out, args.ensemble)
    name = torch.cuda.get_device_name(0)
    shipped = 44_992
    body = f"""`python -m benchmarks.studies.gpu_budget --recipe {args.recipe} --minutes \
{args.minutes:g}` on {name}: the shipped `{budget.NAME}` trained further in float32 with batches of
{args.batch_size}, {records[-1]['samples']:,} samples in {records[-1]['seconds']:.0f} s of training
({records[-1]['samples'] / shipped:.1f}x the shipped model's training budget;
last chunk {records[-1]['samples_per_s']:.0f} samples/s). Cells as in the training-budget
study: rMSE ratio to ClassicalCB-25 (F1 difference) on its held-out sets.

{budget.table(records)}
"""
    print(body)
    write_study_section(f"gpu_budget_{args.recipe}", f"GPU training budget ({args.recipe})",
                        body, records)
    return records


if __name__ == "__main__":
    main()
