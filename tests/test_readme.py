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
