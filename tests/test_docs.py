"""The documentation builds offline without a warning, and its gallery runs."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_without_warnings_and_run_the_gallery(tmp_path):
    pytest.importorskip("sphinx_gallery")
    out = tmp_path / "html"
    result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html",
                             str(ROOT / "docs"), str(out), "-d", str(tmp_path / "doctrees")],
                            capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for example in sorted((ROOT / "examples").glob("plot_*.py")):
        page = (out / "auto_examples" / f"{example.stem}.html").read_text()
        assert "sphx-glr-script-out" in page or "sphx-glr-single-img" in page, example.name
    assert "Traceback" not in (out / "auto_examples" / "plot_quickstart.html").read_text()
    api = (out / "generated" / "unfolded_sbl.ClassicalCB.html").read_text()
    assert "Wipf" in api  # the References section renders
    assert (out / "findings" / "results.html").exists()
