"""``make demo`` runs ``autotimm.demo.main``: it must train and report real metrics."""

from __future__ import annotations

from autotimm import demo


def test_demo_trains_to_high_accuracy(capsys):
    metrics = demo.main(max_epochs=2)
    assert metrics["val/accuracy"] >= 0.9
    out = capsys.readouterr().out
    assert "before training" in out and "after training" in out
    assert "pattern A" in out  # class names, not indices, in the confusion matrix
