"""``make demo`` runs ``autotimm.demo.main``: it must train and report real metrics."""

from __future__ import annotations

from pathlib import Path

from autotimm import demo


def test_demo_trains_and_reports(tmp_path, capsys):
    # digits: the same code path as the mnist5k demo, on a smaller real dataset.
    result = demo.main(dataset="digits", max_epochs=3, output_dir=tmp_path)
    assert result["val_accuracy"] >= 0.9
    assert Path(result["best_checkpoint"]).is_file()
    out = capsys.readouterr().out
    for text in ("validation accuracy", "Best checkpoint", "Top-3 predictions", "(probability)"):
        assert text in out
