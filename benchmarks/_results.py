"""Write benchmark sections into benchmarks/RESULTS.md and JSON results files."""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

HERE = Path(__file__).parent
RESULTS_MD = HERE / "RESULTS.md"


def machine_line():
    import numpy
    import torch

    import unfolded_sbl

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, numpy {numpy.__version__}, torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads), unfolded_sbl "
            f"{unfolded_sbl.__version__}")


def write_section(key, title, body, payload=None):
    """Replace (or append) the section ``key`` of RESULTS.md; dump ``payload`` JSON."""
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else (
        "# Benchmark results\n\nEvery section is written by the script it names; rerun "
        "the script to refresh it. Times are ratios measured in one run on one machine "
        "(the machines are noisy).\n")
    section = (f"<!-- {key}:start -->\n## {title}\n\n{body.strip()}\n\n"
               f"Machine: {machine_line()}\n<!-- {key}:end -->")
    pattern = re.compile(rf"<!-- {key}:start -->.*?<!-- {key}:end -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else (
        text.rstrip() + "\n\n" + section + "\n")
    RESULTS_MD.write_text(text)
    if payload is not None:
        (HERE / "results").mkdir(exist_ok=True)
        with open(HERE / "results" / f"{key}.json", "w") as fid:
            json.dump(payload, fid, indent=2, default=float)
