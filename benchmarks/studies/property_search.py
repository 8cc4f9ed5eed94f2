"""The robustness property test's families, searched at random for many minutes.

    python -m benchmarks.studies.property_search                 # 15 min
    python -m benchmarks.studies.property_search --minutes 2 --seed 3

``tests/test_robustness_properties.py`` checks a few dozen derandomized examples per
estimator in CI.  This draws problems at random from the same families
(``benchmarks._problems``) on three caps (biosemi64, things63, biosemi128, ico3) until the
time is up, plus two kinds the test does not draw: a DC offset on every channel, and
five flat channels with one channel 10^4 x the others.  Every problem goes to
ClassicalCB (joint and known noise) and every shipped ico3 model in torch and in ONNX.
It counts exceptions, non-finite outputs, and, where ground truth exists, the problems
on which a learned model's rMSE exceeds 1.05x ClassicalCB's (unless both are below
0.05), with the worst one's reproducer: ``benchmarks._problems.make_problem(fwd,
family, value, seed)``.  Each problem holds 3 samples.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import unfolded_sbl as us
from benchmarks._problems import FAMILIES, make_problem
from benchmarks._results import write_study_section
from unfolded_sbl import zoo
from unfolded_sbl.mne_io import _needs_noise  # known-noise solvers get the true noise

CAPS = ("biosemi64-ico3", "things63-ico3", "biosemi128-ico3")
MAX_RATIO = 1.05
SOLVED = 0.05
#: probability of each extra corruption on top of a family member (it removes the truth)
EXTRAS = {"DC offset": 0.15, "5 flat + one 10^4 x": 0.15}


def estimators(fwd):
    out = {"ClassicalCB": us.ClassicalCB(fwd).fit(),
           "ClassicalCB-known": us.ClassicalCB(fwd, noise="known").fit()}
    for name in us.list_pretrained():
        if name in zoo.DENSER:
            continue  # its regime check solves ico3 classically
        out[f"{name}/torch"] = us.load_pretrained(name, forward=fwd)
        out[f"{name}/onnx"] = us.load_pretrained(name, forward=fwd, backend="onnx")
    return out


def draw(rng, fwd):
    """(description, X, truth or None, noise_var) of one random problem."""
    family = str(rng.choice(list(FAMILIES)))
    low, high, integer, _ = FAMILIES[family]
    value = int(rng.integers(low, high + 1)) if integer else float(rng.uniform(low, high))
    seed = int(rng.integers(0, 2 ** 31))
    X, truth, noise_var = make_problem(fwd, family, value, seed)
    extra, u = None, rng.random()
    if u < EXTRAS["DC offset"] and family != "noise_free":
        extra = "DC offset"
        X = X + rng.normal(size=(1, X.shape[1], 1)) * np.std(X) * 5
    elif u < sum(EXTRAS.values()):
        extra = "5 flat + one 10^4 x"
        X = X.copy()
        X[:, rng.integers(X.shape[1])] *= 1e4
        X[:, rng.choice(X.shape[1], 5, replace=False)] = 0.0
    described = {"family": family, "value": round(value, 4), "seed": seed, "extra": extra}
    return described, X, None if extra else truth, noise_var


def solve(est, X, noise_var):
    """Estimate, or the exception's text; RuntimeWarnings count as failures."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            out = est.predict(X, noise_var=noise_var) if _needs_noise(est) else est.predict(X)
    except Exception as err:  # the search counts every kind
        return None, f"{type(err).__name__}: {str(err)[:200]}"
    finite = (np.all(np.isfinite(out)) and np.all(np.isfinite(est.source_var_))
              and np.all(np.isfinite(est.noise_var_)))
    return out, None if finite else "non-finite output"


def search(minutes, seed, verbose=True):
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    forwards = {cap: us.load_forward(cap) for cap in CAPS}
    solvers = {cap: estimators(fwd) for cap, fwd in forwards.items()}
    names = list(solvers[CAPS[0]])
    stats = {name: {"problems": 0, "failures": [], "with_truth": 0, "worse": [],
                    "worst": None} for name in names}
    deadline = time.perf_counter() + 60 * minutes
    bar = tqdm(desc="problems", disable=not verbose)
    while time.perf_counter() < deadline:
        cap = str(rng.choice(CAPS))
        described, X, truth, noise_var = draw(rng, forwards[cap])
        described["cap"] = cap
        outputs = {}
        for name, est in solvers[cap].items():
            out, failure = solve(est, X, noise_var)
            stats[name]["problems"] += 1
            if failure:
                stats[name]["failures"].append({**described, "error": failure})
            outputs[name] = out
        if truth is not None:
            _compare(stats, outputs, solvers[cap], truth, described)
        bar.update()
    bar.close()
    return stats


def _compare(stats, outputs, solvers, truth, described):
    for name, out in outputs.items():
        if name.startswith("ClassicalCB") or out is None:
            continue
        reference = outputs["ClassicalCB-known" if _needs_noise(solvers[name]) else "ClassicalCB"]
        if reference is None:
            continue
        learned, classical = us.rmse(truth, out), us.rmse(truth, reference)
        ratio = learned / classical if max(learned, classical) >= SOLVED else 0.0
        entry = stats[name]
        entry["with_truth"] += 1
        if ratio > MAX_RATIO:
            entry["worse"].append({**described, "ratio": round(float(ratio), 3)})
        if entry["worst"] is None or ratio > entry["worst"]["ratio"]:
            entry["worst"] = {**described, "ratio": round(float(ratio), 3)}


def report(stats, minutes, seed):
    lines = ["| estimator | problems | exceptions or non-finite | problems with truth | "
             f"rMSE > {MAX_RATIO}x ClassicalCB | families of those | worst: ratio (cap, "
             "family, value, seed) |", "|---|---|---|---|---|---|---|"]
    for name, s in stats.items():
        worst = s["worst"]
        worst_text = ("-" if worst is None else
                      f"{worst['ratio']:.2f} ({worst['cap']}, {worst['family']}, "
                      f"{worst['value']:g}, {worst['seed']})")
        families = sorted({w["family"] for w in s["worse"]})
        lines.append(f"| {name} | {s['problems']} | {len(s['failures'])} | "
                     f"{s['with_truth'] or '-'} | "
                     f"{len(s['worse']) if s['with_truth'] else '-'} | "
                     f"{', '.join(families) or '-'} | {worst_text} |")
    failures = [f"- {name}: {f}" for name, s in stats.items() for f in s["failures"][:5]]
    return f"""`python -m benchmarks.studies.property_search --minutes {minutes:g} --seed {seed}`. \
Problems drawn at random from the property test's families (`benchmarks._problems`;
3 samples each) on {', '.join(CAPS)}, {int(100 * sum(EXTRAS.values()))} % of them with a
DC offset or with five flat channels and one 10^4 x the others added (those have no
truth). Every estimator solved every problem; the truth comparisons are per problem
(rMSE over its 3 samples) against the 1.05x that issue 11 asked of every problem (the
property test asserts 1.5x per problem, and at most 1.00x summed over a fixed grid).

{chr(10).join(lines)}

{"Failures:" + chr(10) * 2 + chr(10).join(failures) if failures else "No exception and no non-finite output."}
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    stats = search(args.minutes, args.seed)
    body = report(stats, args.minutes, args.seed)
    print(body)
    if not args.no_write:
        write_study_section("property_search", "Robustness properties: a long random search",
                      body, stats)


if __name__ == "__main__":
    main()
