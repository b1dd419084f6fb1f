"""The Python examples of the home page and the quickstart run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _python_blocks(page: str) -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.DOTALL))


@pytest.mark.parametrize("page", ["index.md", "quickstart.md"])
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write lightning_logs/ into the working directory
    code = _python_blocks(page)
    assert "ImageClassifier" in code
    namespace: dict = {}
    exec(compile(code, str(DOCS / page), "exec"), namespace)
    assert (tmp_path / "lightning_logs").is_dir()
