"""Every Python example of the README and the docs runs as written, or says visibly why it cannot.

Each page's examples run in order in one namespace, in a fresh working folder
that holds a small real image folder at ``path/to/images`` (crops of three
photographs: ``cat``, ``coffee`` and ``rocket``) and ``photos/`` with
``cat.jpg``, ``coffee.jpg`` and ``rocket.jpg``, the placeholders the examples use. For speed, a few large
backbones are built as timm's tiny test models of the same family (the code
path is the same). An example that cannot run here is preceded by a line
ending in "(not run by the docs tests)", after its reason, e.g. "Needs the
Hugging Face hub (not run by the docs tests):".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import timm
from data_helpers import write_photo_folder, write_photos

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: Every page with examples: the README, the home page, the quickstart and the guides.
GUIDES = sorted(f"docs/guide/{path.name}" for path in (DOCS / "guide").glob("*.md"))
PAGES = ["README.md", "docs/index.md", "docs/quickstart.md", *GUIDES]
SKIP_MARK = "(not run by the docs tests"
#: What some pages' examples write, relative to the working folder.
WRITES = {
    "README.md": ["runs/pets/splits.json", "runs/pets/eval/metrics.json", "cat_gradcam.png", "pets.onnx"],
    "docs/index.md": ["runs/pets/checkpoints/last.ckpt", "runs/pets/splits.json"],
    "docs/quickstart.md": ["runs/pets/splits.json", "runs/pets/eval/metrics.json", "lightning_logs"],
    "docs/guide/training.md": ["runs/digits/checkpoints"],
    "docs/guide/finetuning.md": ["runs/probe/checkpoints/last.ckpt"],
    "docs/guide/prediction.md": ["runs/digits/checkpoints"],
    "docs/guide/evaluation.md": ["runs/digits/eval"],
    "docs/guide/explain.md": ["square_gradcam.png"],
    "docs/guide/export.md": ["exported/pets.int8.onnx"],
    "docs/guide/serving.md": ["pets.ckpt"],
}
#: Backbones built as a tiny model of the same family in these tests (same code path, a fraction of the time).
TINY = {"resnet18": "test_resnet", "resnet50": "test_resnet", "vit_base_patch16_224": "test_vit"}


@dataclass(frozen=True)
class Example:
    """One fenced Python block of a page."""

    page: str
    line: int  # of the block's first code line
    code: str
    skip_reason: str | None  # the marked line before the block, for an example that is not run


def examples(page: str) -> list[Example]:
    """The page's Python blocks, in order, with the mark of those that are not run."""
    text = (ROOT / page).read_text(encoding="utf-8")
    found = []
    for match in re.finditer(r"^```(?:python|py)\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
        before = [line for line in text[: match.start()].splitlines() if line.strip()]
        mark = before[-1] if before and SKIP_MARK in before[-1] else None
        line = text.count("\n", 0, match.start(1)) + 1
        found.append(Example(page, line, match.group(1), mark))
    return found


@pytest.fixture
def tiny_backbones(monkeypatch):
    create = timm.create_model

    def create_tiny(model_name, *args, **kwargs):
        return create(TINY.get(model_name, model_name), *args, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_tiny)


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page, tmp_path, monkeypatch, tiny_backbones, single_thread):
    monkeypatch.chdir(tmp_path)  # the examples write into the working folder
    write_photo_folder(tmp_path / "path" / "to" / "images")
    write_photos(tmp_path / "photos")
    runnable = [example for example in examples(page) if example.skip_reason is None]
    namespace: dict = {"__name__": "docs_example"}
    for example in runnable:
        # Padded so that a traceback names the line of the page.
        exec(compile("\n" * (example.line - 1) + example.code, str(ROOT / page), "exec"), namespace)
    for written in WRITES.get(page, []):
        assert (tmp_path / written).exists(), f"{page}'s examples should write {written}"


def test_every_page_with_examples_is_tested_and_skips_say_why():
    assert all(examples(page) for page in WRITES), "a page in WRITES has no Python example"
    skipped = [example for page in PAGES for example in examples(page) if example.skip_reason]
    for example in skipped:
        reason = example.skip_reason.split(SKIP_MARK)[0].strip(" _*:")
        assert len(reason.split()) >= 3, f"{example.page}:{example.line}: say why the example is not run"
    # Few are skipped, and never the first screen of the README or the quickstart.
    assert not any(e.skip_reason for p in ("docs/quickstart.md", "docs/index.md") for e in examples(p))
    assert examples("README.md")[0].skip_reason is None and examples("README.md")[1].skip_reason is None


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


def command_lines(page: str, after: str | None = None) -> list[str]:
    """The ``autotimm`` commands of a page's bash blocks (of the first block after the heading ``after``)."""
    text = (ROOT / page).read_text(encoding="utf-8")
    if after is not None:
        text = text[text.index(after) :]
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    blocks = blocks[:1] if after is not None else blocks
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("autotimm ")]


@pytest.mark.parametrize(("page", "after"), [("README.md", "## Command line"), ("docs/quickstart.md", None)])
def test_command_line_examples_run(page, after, tmp_path, monkeypatch, tiny_backbones, single_thread, capsys):
    """The README's and the quickstart's commands run as written (one epoch; ``serve`` would block)."""
    import shlex

    from autotimm.cli import main

    monkeypatch.chdir(tmp_path)
    write_photo_folder(tmp_path / "path" / "to" / "images")
    write_photos(tmp_path / "photos")
    commands = command_lines(page, after)
    assert commands, f"{page} has no autotimm command"
    for command in commands:
        words = shlex.split(command)[1:]
        if words[0] == "serve":
            continue
        if "--epochs" in words:
            words[words.index("--epochs") + 1] = "1"
        assert main(words) == 0, f"{page}: {command!r} failed:\n{capsys.readouterr().err[-2000:]}"
    written = {"README.md": ["runs/pets/eval-test/metrics.json", "cams", "pets.onnx"], "docs/quickstart.md": []}
    assert (tmp_path / "runs" / "pets" / "checkpoints" / "last.ckpt").is_file()
    for path in written[page]:
        assert (tmp_path / path).exists(), f"{page}'s commands should write {path}"
