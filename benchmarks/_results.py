"""Write benchmark sections into benchmarks/RESULTS.md and JSON results files."""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path

HERE = Path(__file__).parent
#: One-off studies write their sections to their own results file.
STUDIES = HERE / "studies"


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows:
    timings from two machines of the same architecture are not comparable, and the
    architecture alone does not tell them apart."""
    try:
        with open("/proc/cpuinfo") as fid:
            for line in fid:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line():
    import numpy
    import onnxruntime
    import torch

    import unfolded_sbl

    return (f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, numpy {numpy.__version__}, torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
            f"{onnxruntime.__version__}, unfolded_sbl {unfolded_sbl.__version__}")


def matmul_peak(size=1024, repeats=5, dtype="float32"):
    """Measured matrix-multiply throughput (GFLOP/s) of this machine: a square GEMM
    of ``size`` in ``dtype``, after one warm-up product."""
    import torch

    a = torch.randn(size, size, dtype=getattr(torch, dtype))
    b = torch.randn(size, size, dtype=getattr(torch, dtype))
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e9


def take_turns(runs, rounds, settle=0.0):
    """Call every function of ``runs`` (name -> no-argument callable) once per round,
    in turn, for ``rounds`` rounds, so that a slow spell of a noisy machine hits all
    of them alike; returns name -> list of what each call returned.  ``settle``
    seconds of sleep before each call let the previous one's threads go idle."""
    values = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            time.sleep(settle)
            values[name].append(run())
    return values


def write_section(key, title, body, payload=None, root=HERE):
    """Replace (or append) the section ``key`` of ``root``/RESULTS.md; dump ``payload`` JSON
    into ``root``/results/``key``.json."""
    root = Path(root)
    results_md = root / "RESULTS.md"
    text = results_md.read_text() if results_md.exists() else (
        "# Benchmark results\n\nEvery section is written by the script it names; rerun "
        "the script to refresh it. Times are ratios measured in one run on one machine "
        "(the machines are noisy).\n")
    section = (f"<!-- {key}:start -->\n## {title}\n\n{body.strip()}\n\n"
               f"Machine: {machine_line()}\n<!-- {key}:end -->")
    pattern = re.compile(rf"<!-- {key}:start -->.*?<!-- {key}:end -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else (
        text.rstrip() + "\n\n" + section + "\n")
    results_md.write_text(text)
    if payload is not None:
        (root / "results").mkdir(parents=True, exist_ok=True)
        with open(root / "results" / f"{key}.json", "w") as fid:
            json.dump(payload, fid, indent=2, default=float)


def write_study_section(key, title, body, payload=None):
    """:func:`write_section` into ``benchmarks/studies/RESULTS.md``."""
    write_section(key, title, body, payload, root=STUDIES)
