"""Deployment without the package: environment size, opening and solving time, and
agreement with the package, for deploy/'s two files (one run).

    python -m benchmarks.bench_deploy [--rounds 5] [--env PATH]

Builds a fresh virtual environment holding onnxruntime and numpy only (or reuses
``--env``), measures its size against this environment's, and runs
deploy/python/localize.py's functions in it on deploy/sample-evoked.npy: the time
to open each file (onnxruntime's default options and the examples' options) and to
solve the recording (median of ``--rounds`` calls after one warm-up), and the
relative difference to the package's estimate.  Writes the ``deploy`` section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np

import unfolded_sbl as us
from benchmarks._results import write_section

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
FILES = {"ClassicalCB": DEPLOY / "classical-cb-biosemi64-ico3.onnx",
         "deep-cb-joint": DEPLOY / "deep-cb-joint-biosemi64-ico3.onnx"}
SAMPLE = DEPLOY / "sample-evoked.npy"

#: Run inside the small environment: times and estimates of one file, as JSON.
PROBE = r"""
import json, statistics, sys, time
import numpy as np, onnxruntime as ort
sys.path.insert(0, sys.argv[1])
import localize
path, sample, out, rounds = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
start = time.perf_counter()
ort.InferenceSession(path, providers=["CPUExecutionProvider"])
default_open = time.perf_counter() - start
start = time.perf_counter()
session, contract = localize.load(path)
open_s = time.perf_counter() - start
eeg = np.load(sample)
localize.localize(session, contract, eeg)
times = []
for _ in range(rounds):
    start = time.perf_counter()
    result = localize.localize(session, contract, eeg)
    times.append(time.perf_counter() - start)
np.save(out, result["sources"])
print(json.dumps({"default_open_s": default_open, "open_s": open_s,
                  "solve_ms": 1e3 * statistics.median(times)}))
"""


def _size_mb(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2 ** 20


def small_env(path):
    """A virtual environment at ``path`` with onnxruntime and numpy only."""
    python = Path(path) / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "onnxruntime", "numpy"],
                       check=True)
    return python


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--env", default=None, help="reuse this small environment")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        env = Path(args.env or Path(tmp) / "env")
        python = small_env(env)
        site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                                    "get_paths()['purelib'])"], capture_output=True,
                                   text=True, check=True).stdout.strip())
        sizes = {"onnxruntime + numpy": _size_mb(site),
                 "this package's environment": _size_mb(sysconfig.get_paths()["purelib"])}
        eeg = np.load(SAMPLE)[None].astype(np.float64)
        fwd = us.load_forward()
        package = {"ClassicalCB": us.ClassicalCB(fwd).fit().predict(eeg),
                   "deep-cb-joint": us.load_pretrained("deep-cb-joint", forward=fwd).predict(eeg)}
        rows = {}
        for name, path in FILES.items():
            out = Path(tmp) / f"{name}.npy"
            run = subprocess.run([str(python), "-c", PROBE, str(DEPLOY / "python"), str(path),
                                  str(SAMPLE), str(out), str(args.rounds)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(run.stdout.strip().splitlines()[-1])
            ref = package[name]
            row["relative_difference"] = float(np.linalg.norm(np.load(out) - ref)
                                               / np.linalg.norm(ref))
            row["file_mb"] = path.stat().st_size / 2 ** 20
            rows[name] = row
    lines = ["| environment | size (MB) |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in sizes.items()]
    lines += ["", "| file | size (MB) | open, onnxruntime defaults (s) | open, "
              "`enable_mem_reuse=False` (s) | solve 1 x 64 x 100 (ms) | "
              "relative difference to the package |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {r['file_mb']:.1f} | {r['default_open_s']:.1f} | "
              f"{r['open_s']:.1f} | {r['solve_ms']:.1f} | {r['relative_difference']:.1e} |"
              for name, r in rows.items()]
    body = ("`python -m benchmarks.bench_deploy`: deploy/python/localize.py in a fresh "
            "virtual environment holding onnxruntime and numpy only, on "
            "deploy/sample-evoked.npy (one 64-channel window of 100 samples); solve time "
            f"is the median of {args.rounds} calls after a warm-up; the difference is to the "
            "package's float64 estimate (Deep CB's file runs its solver in float32).\n\n"
            + "\n".join(lines))
    print(body)
    if not args.no_write:
        write_section("deploy", "Deployment without the package", body,
                      {"sizes_mb": sizes, "files": rows})


if __name__ == "__main__":
    main()
