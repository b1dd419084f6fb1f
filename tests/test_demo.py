"""``make demo`` runs ``autotimm.cli.quickstart.main``: it must train and report real metrics."""

from __future__ import annotations

from pathlib import Path

from autotimm.cli import quickstart as demo


def test_demo_trains_and_reports(tmp_path, capsys):
    # digits: the same code path as the mnist5k demo, on a smaller real dataset.
    result = demo.main(dataset="digits", max_epochs=3, output_dir=tmp_path)
    assert result["val_accuracy"] >= 0.9
    assert result["test_accuracy"] >= 0.85
    assert result["onnx_agreement"] == 1.0
    assert Path(result["best_checkpoint"]).is_file()
    for name in ("model.ckpt", "model.onnx", "evaluation/metrics.json", "evaluation/confusion_matrix.png"):
        assert (tmp_path / name).is_file(), name
    out = capsys.readouterr().out
    for text in ("validation accuracy", "Best checkpoint", "Calibration", "Top-3 predictions", "(probability)", "ONNX"):
        assert text in out
