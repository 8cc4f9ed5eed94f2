"""Unfolded networks: layer throughput, and accuracy against ClassicalCB on held-out data.

Held-out data come from the perturbed-conductivity template (other skull
conductivity, jittered electrodes), so no method sees its own forward model.
The shipped models (``unfolded-sbl train NAME`` made them) are evaluated as
shipped; Bias CB is trained here under the stated budget.

    python -m benchmarks.bench_unfolded [--n-eval 256] [--bias-epochs 4]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import unfolded_sbl as us
from benchmarks._results import write_section
from unfolded_sbl.evaluation import TABLE_NOTE, evaluate, format_table
from unfolded_sbl.training import relative_error
from unfolded_sbl.zoo import model_card


def throughput(fwd, correction, batch_size, repeats=2):
    """Samples per second of a 25-layer network (its default float64): forward only, and a
    training step."""
    est = us.UnfoldedSBLRegressor(fwd, correction=correction, max_epochs=0).fit_simulated()
    data = us.simulate(fwd, batch_size, random_state=0)
    Y, X, _ = est._normalise(data.sensors, data.sources)
    L = est._tensor(est.lead_field_)
    net = est.network_.train()
    with torch.no_grad():
        net(Y[:2], L)
        start = time.perf_counter()
        for _ in range(repeats):
            net(Y, L)
        forward = repeats * batch_size / (time.perf_counter() - start)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    start = time.perf_counter()
    for _ in range(repeats):
        out = net(Y, L, return_layers=(4, 9, 14, 19, 23))
        loss = relative_error(out["sources"], X) + sum(
            relative_error(v, X) for v in out["intermediate"].values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    train = repeats * batch_size / (time.perf_counter() - start)
    return forward, train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-eval", type=int, default=256)
    parser.add_argument("--bias-epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    fwd = us.load_forward()

    speed = {}
    for correction, batch in (("mlp", 32), ("mlp", 64), ("attention", 16)):
        speed[f"{correction}, batch {batch}"] = throughput(fwd, correction, batch)
        print(correction, batch, "forward %.1f / train %.1f samples/s" % speed[
            f"{correction}, batch {batch}"])

    start = time.perf_counter()
    bias = us.UnfoldedSBLRegressor(fwd, correction="bias", noise_correction="bias",
                                   max_epochs=args.bias_epochs, steps_per_epoch=20,
                                   progressive_steps=2, batch_size=32, learning_rate=2e-3,
                                   random_state=args.seed).fit_simulated()
    bias_seconds = time.perf_counter() - start

    data = us.simulate("biosemi64-ico3-perturbed", args.n_eval, random_state=20_000 + args.seed)
    estimators = {
        "sLORETA": us.SLORETA(fwd).fit(),
        "ClassicalCB known noise, 25 it.": us.ClassicalCB(fwd, noise="known").fit(),
        "ClassicalCB known noise, 100 it.": us.ClassicalCB(fwd, noise="known", n_iter=100).fit(),
        "ClassicalCB joint, 25 it.": us.ClassicalCB(fwd).fit(),
        "ClassicalCB joint, 100 it.": us.ClassicalCB(fwd, n_iter=100).fit(),
        "Bias CB joint (trained here)": bias,
        "Deep CB known noise (shipped)": us.load_pretrained("deep-cb-known", forward=fwd),
        "Deep CB joint (shipped)": us.load_pretrained("deep-cb-joint", forward=fwd),
        "Deep Attn CB joint (shipped)": us.load_pretrained("deep-attn-cb-joint", forward=fwd),
        "Deep Graph CB joint (shipped)": us.load_pretrained("deep-graph-cb-joint",
                                                            forward=fwd),
    }
    known = [k for k in estimators if "known" in k]
    rows = evaluate(estimators, data, fwd, {k: {"noise_var": data.noise_var} for k in known})
    print(format_table(rows))
    base = rows["ClassicalCB joint, 25 it."]
    gains = "\n".join(
        f"- {name} vs ClassicalCB joint, 25 it.: rMSE {100 * (rows[name]['rmse'] / base['rmse'] - 1):+.1f} %, "
        f"F1 {100 * (rows[name]['f1'] / base['f1'] - 1):+.1f} %, "
        f"EMD {100 * (rows[name]['emd'] / base['emd'] - 1):+.1f} %"
        for name in ("Bias CB joint (trained here)", "Deep CB joint (shipped)",
                     "Deep Attn CB joint (shipped)", "Deep Graph CB joint (shipped)"))
    budgets = {name: model_card(name)["training"] for name in
               ("deep-cb-joint", "deep-cb-known", "deep-attn-cb-joint", "deep-graph-cb-joint")}
    seen = [b["samples_seen"] for b in budgets.values()]
    learned = [k for k in rows if "shipped" in k]
    scored = {m: [k for k in rows if math.isfinite(rows[k][m])]  # sLORETA has no rMSE scale
              for m in ("rmse", "f1", "emd", "le")}
    best = {m: min(scored[m], key=lambda k: rows[k][m]) for m in ("rmse", "emd", "le")}
    best["f1"] = max(scored["f1"], key=lambda k: rows[k]["f1"])
    best_lines = "; ".join(f"{m.upper() if m != 'rmse' else 'rMSE'} {best[m]}"
                           for m in ("rmse", "f1", "emd", "le"))
    deep = rows["Deep CB joint (shipped)"]["rmse"] / base["rmse"] - 1
    budget_lines = "\n".join(
        f"- {name}: {b['samples_seen']:,} training samples seen over "
        f"{len(b['stages'])} stages, {b['seconds'] / 60:.1f} min on 2 CPU cores"
        for name, b in budgets.items())
    speed_lines = "\n".join(f"| {k} | {f:.1f} | {t:.1f} |" for k, (f, t) in speed.items())
    body = f"""`python -m benchmarks.bench_unfolded` - {args.n_eval} held-out samples simulated
with `biosemi64-ico3-perturbed` (seed {20_000 + args.seed}); every method uses the nominal
`biosemi64-ico3` lead field. Deep-supervised training budgets (CPU):

{budget_lines}
- Bias CB: {bias_seconds / 60:.1f} min here ({args.bias_epochs} epochs x 20 steps x 32 samples
  plus 2 progressive steps per layer).

{format_table(rows, markdown=True)}

{TABLE_NOTE}.

{gains}

Paper (table 3, its own simulation): classical joint 0.434 rMSE / 0.522 F1, Deep CB joint
0.348 / 0.588 (rMSE -20 %, F1 +13 %), Deep Attn CB 0.332 / 0.600 (-24 %, +15 %). The paper
trained 100 epochs of 100,000 samples on an A100; the shipped models saw {min(seen):,}-{max(seen):,}
samples on two CPU cores, partly from the robust simulator (model cards), and the shipped
Deep CB gains {-100 * deep:.1f} % rMSE here against the paper's 20 %. Absolute errors are
higher than the paper's because the held-out data come from the perturbed head model (skull
conductivity x0.5 and 3 mm electrode jitter). Best per metric in this run (rMSE, EMD and LE
lowest, F1 highest): {best_lines}
(learned models here: {", ".join(learned)})

Layer throughput (25-layer float64 network, default template):

| network | forward samples/s | training samples/s (fwd + bwd, deep supervision) |
|---|---|---|
{speed_lines}
"""
    if not args.no_write:
        write_section("unfolded", "Unfolded networks against ClassicalCB", body,
                      {"rows": rows, "throughput": speed, "bias_seconds": bias_seconds})


if __name__ == "__main__":
    main()
