"""``autotimm plot``: draw the training curves of one run, or overlay several."""

from __future__ import annotations

from dataclasses import dataclass, field

from autotimm.cli.options import positional

__all__ = ["CONFIG", "PlotConfig", "run"]

NAME = "plot"
HELP = "Draw training curves (loss, metrics, learning rate) of one or several runs."
DESCRIPTION = """\
Draw the training curves of RUN_DIR from its history.json (written by every
`autotimm train` / AutoTrainer run after each epoch): one panel per metric,
train dashed and validation solid, the best epoch of the monitored metric
starred, and the learning rate on its own panel. With several RUN_DIRs the runs
are overlaid, one colour each."""
EXAMPLES = """\
examples:
  autotimm plot runs/pets                      # redraws runs/pets/curves.png
  autotimm plot runs/pets-lr1e-3 runs/pets-lr3e-4 --output lr_compare.png"""


@dataclass
class PlotConfig:
    """Options of ``autotimm plot``.

    Args:
        run_dirs: Run folders (each with a history.json), or history.json files.
        output: The PNG to write; default: RUN_DIR/curves.png for one run, curves_overlay.png for several.
        labels: Legend labels, one per run, separated by commas; default: the folders' names.
    """

    run_dirs: list[str] = field(metadata=positional(nargs="+", metavar="RUN_DIR"))
    output: str | None = None
    labels: str | None = None


#: The options dataclass of this subcommand.
CONFIG = PlotConfig


def run(config: PlotConfig) -> int:
    """Draw the curves and print where they went.

    Args:
        config: The options.

    Returns:
        0.

    Raises:
        FileNotFoundError: A RUN_DIR without history.json.
        ValueError: The wrong number of labels, or nothing to draw.
    """
    from pathlib import Path

    from autotimm.cli.common import console
    from autotimm.training.curves import load_history, plot_curves

    histories = [load_history(path) for path in config.run_dirs]
    labels = None if config.labels is None else [label.strip() for label in config.labels.split(",")]
    if labels is not None and len(labels) != len(histories):
        raise ValueError(f"--labels has {len(labels)} labels for {len(histories)} runs: give one per RUN_DIR")
    if config.output is not None:
        output = Path(config.output)
    elif len(histories) == 1:
        first = Path(config.run_dirs[0])
        output = (first if first.is_dir() else first.parent) / "curves.png"
    else:
        output = Path("curves_overlay.png")
    plot_curves(histories, output, labels=labels)
    epochs = ", ".join(f"{h['name']}: {len(h['rows'])} epochs" for h in histories)
    console().print(f"Wrote {output} ({epochs})", highlight=False)
    return 0
