"""Knowledge distillation: the loss, a real gain on digits, a frozen teacher kept out of the student, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from autotimm import AutoTrainer, BackboneConfig, ImageClassifier
from autotimm.data import load_builtin_dataset
from autotimm.training.distillation import Distillation, distillation_loss

pytestmark = pytest.mark.usefixtures("single_thread")


def test_loss_matches_the_formula_and_is_zero_when_the_student_agrees():
    student = torch.tensor([[1.0, 0.0, -1.0]])
    teacher = torch.tensor([[3.0, 1.0, 0.0]])
    t = 2.0
    p = (teacher / t).softmax(1)
    q = (student / t).softmax(1)
    hand = float((p * (p.log() - q.log())).sum()) * t * t
    assert float(distillation_loss(student, teacher, t)) == pytest.approx(hand, rel=1e-5)
    assert float(distillation_loss(teacher, teacher, t)) == pytest.approx(0.0, abs=1e-6)
    # multi-label: per-class sigmoids, 0 when they agree, positive otherwise
    assert float(distillation_loss(teacher, teacher, t, multi_label=True)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(student, teacher, t, multi_label=True)) > 0


# ---------------------------------------------------------------------- digits at 16 px
def _digits():
    split = load_builtin_dataset("digits")["train"]
    x = torch.tensor(split.images, dtype=torch.float32)[:, None] / float(split.images.max())
    x = (F.interpolate(x, size=16, mode="bilinear").repeat(1, 3, 1, 1) - 0.5) / 0.5
    y = torch.tensor(split.labels)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x, y, order[:500], order[500:], [str(c) for c in split.class_names]


def _trainer(epochs, callbacks=()):
    return pl.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=list(callbacks),
    )  # fmt: skip


def _model(seed, names):
    pl.seed_everything(seed, verbose=False)
    return ImageClassifier(
        BackboneConfig("test_resnet", pretrained=False), num_classes=10, class_names=names, lr=3e-3, scheduler=None
    )


def _accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def digits_teacher():
    x, y, test, pool, names = _digits()
    teacher = _model(0, names)
    _trainer(6).fit(teacher, DataLoader(TensorDataset(x[pool], y[pool]), batch_size=64, shuffle=True))
    return teacher, (x, y, test, pool, names)


def test_distilled_student_beats_the_same_student_alone(digits_teacher):
    teacher, (x, y, test, pool, names) = digits_teacher
    teacher_acc = _accuracy(teacher, x[test], y[test])
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    scores: dict[str, list[float]] = {"alone": [], "distilled": []}
    for seed in range(3):
        # The student sees 200 images with 30% of their labels replaced at random; the teacher was trained on
        # ~1,400 clean ones. (On clean 200-image subsets the gain, +5 points in one 3-seed run and -0.5 in
        # another, was within the seeds' spread: too weak for a test that must not flake.)
        subset = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:200]]
        labels = y[subset].clone()
        noisy = torch.rand(len(subset), generator=torch.Generator().manual_seed(100 + seed)) < 0.3
        labels[noisy] = torch.randint(0, 10, (int(noisy.sum()),), generator=torch.Generator().manual_seed(200 + seed))
        loader = DataLoader(TensorDataset(x[subset], labels), batch_size=32, shuffle=True)
        for kind in scores:
            student = _model(seed, names)
            callbacks = [Distillation(teacher, alpha=0.5, temperature=2.0)] if kind == "distilled" else []
            pl.seed_everything(seed, verbose=False)
            _trainer(20, callbacks).fit(student, loader)
            scores[kind].append(_accuracy(student, x[test], y[test]))
    alone, distilled = np.mean(scores["alone"]), np.mean(scores["distilled"])
    print(f"teacher {teacher_acc:.3f}; student alone {alone:.3f}, distilled {distilled:.3f}: {scores}")
    assert distilled > alone + 0.05, scores  # measured: 0.56 alone, 0.82 distilled (+17 to +34 points a seed)
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the teacher is never trained
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_teacher_stays_out_of_the_optimizer_and_checkpoint(digits_teacher, tmp_path):
    teacher, (x, y, _, pool, names) = digits_teacher
    student = _model(1, names)
    loader = DataLoader(TensorDataset(x[pool[:64]], y[pool[:64]]), batch_size=32)
    distill = Distillation(teacher, alpha=0.5, temperature=4.0)
    trainer = AutoTrainer(
        max_epochs=1, output_dir=tmp_path / "run", logger=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", callbacks=[distill], monitor="train/loss",
    )  # fmt: skip
    trainer.fit(student, loader)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized.isdisjoint(id(p) for p in teacher.parameters())
    assert getattr(student, "distillation", None) is None  # detached after fit
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(checkpoint["state_dict"]) == set(student.state_dict())
    record = checkpoint["callbacks"]["Distillation"]
    assert record["alpha"] == 0.5 and record["temperature"] == 4.0 and len(record["sha256"]) == 64
    assert "train/distill_loss" in trainer.callback_metrics
    assert ImageClassifier.load(tmp_path / "run" / "checkpoints" / "last.ckpt").hparams.num_classes == 10


def test_class_names_must_match_and_arguments_are_checked(digits_teacher):
    teacher, (x, y, _, pool, names) = digits_teacher
    student = _model(0, [f"digit {n}" for n in names])
    loader = DataLoader(TensorDataset(x[pool[:32]], y[pool[:32]]), batch_size=32)
    with pytest.raises(ValueError, match=r"class names .* differ from the student's"):
        _trainer(1, [Distillation(teacher)]).fit(student, loader)
    with pytest.raises(ValueError, match="alpha"):
        Distillation(teacher, alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        Distillation(teacher, temperature=0)
    with pytest.raises(TypeError, match="must be a loaded model"):
        Distillation("teacher.ckpt")
