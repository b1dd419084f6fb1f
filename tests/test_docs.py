"""The Python examples of the home page and the quickstart run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _python_blocks(page: str, first: int | None = None) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.DOTALL)
    return "\n".join(blocks[:first])


@pytest.mark.parametrize(("page", "first", "writes"), [
    ("index.md", None, "lightning_logs"),
    ("quickstart.md", None, "lightning_logs"),
    ("guide/training.md", 1, "runs/digits/checkpoints"),
    ("guide/finetuning.md", None, "runs/probe/checkpoints/last.ckpt"),
    ("guide/prediction.md", None, "runs/digits/checkpoints"),
    ("guide/evaluation.md", None, "runs/digits/eval"),
    ("guide/explain.md", None, "square_gradcam.png"),
    ("guide/export.md", None, "exported/pets.int8.onnx"),
    ("guide/serving.md", None, "pets.ckpt"),
])  # fmt: skip
def test_page_examples_run(page, first, writes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write their logs into the working directory
    code = _python_blocks(page, first)
    assert "ImageClassifier" in code or "autotimm" in code
    namespace: dict = {}
    exec(compile(code, str(DOCS / page), "exec"), namespace)
    assert (tmp_path / writes).exists()


def test_every_subpackage_has_an_api_page():
    package = DOCS.parent / "autotimm"
    subpackages = sorted(path.parent.name for path in package.glob("*/__init__.py"))
    nav = (DOCS.parent / "mkdocs.yml").read_text(encoding="utf-8")
    layout = (DOCS / "guide" / "layout.md").read_text(encoding="utf-8")
    for name in subpackages:
        page = DOCS / "api" / f"{name}.md"
        assert page.exists(), f"autotimm.{name} needs an API page, {page.relative_to(DOCS.parent)}"
        assert f"autotimm.{name}: api/{name}.md" in nav, f"mkdocs.yml nav lacks api/{name}.md"
        assert f"[`autotimm.{name}`](../api/{name}.md)" in layout, f"the package layout page lacks autotimm.{name}"


def test_layout_page_lists_the_old_paths():
    from autotimm._deprecated import MOVED

    rows = dict(re.findall(r"^\| `(autotimm\.[\w.]+)` \| `([\w.]+)`", (DOCS / "guide" / "layout.md").read_text(), re.M))
    assert rows == {old: homes[0] for old, homes in MOVED.items()}
