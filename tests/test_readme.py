"""The README's tutorial runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tutorial_runs(tmp_path, monkeypatch):
    text = README.read_text()
    start = text.index("### Tutorial")
    code = re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README tutorial", "exec"), namespace)
    for name in ("my-evoked.png", "my-evoked.html", "my-evoked-peaks.csv"):
        assert (tmp_path / name).stat().st_size > 0
    assert namespace["search"].best_params_["solver__n_iter"] in (10, 25)
    assert len(text.encode()) <= 10_000  # the front door stays short


def test_readme_model_table_quotes_the_cards():
    """The "Choose a model" table's median ratios are the cards' robustness summaries,
    and a model that loses nowhere there is the one the table says loses on nothing."""
    import unfolded_sbl as us

    text = README.read_text()
    rows = re.findall(r"^\| `([\w-]+)` \| [^|]+ \| ([\d.]+) \| ([^|]+) \|$", text, re.M)
    cards = {row["name"]: row for row in us.list_pretrained(details=True)}
    assert {name for name, _, _ in rows} == set(cards)
    for name, ratio, loses in rows:
        assert float(ratio) == round(cards[name]["median_ratio"], 2), name
        assert (loses.strip() == "nothing") == (not cards[name]["loses"]), name


def test_readme_deploy_section_runs_without_the_package():
    """The Deploy section's code imports onnxruntime and numpy, not this package, and
    runs as written from the repository root."""
    import subprocess
    import sys

    text = README.read_text()
    start = text.index("## Deploy")
    code = re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)
    assert "import unfolded_sbl" not in code and "us." not in code
    check = code + "\nassert sources.shape == (1, 1284, 100) and not fallback.any()\n"
    run = subprocess.run([sys.executable, "-c", check], cwd=README.parent,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
