"""Scheduler registry, factory, warm-up and the learning-rate trajectories they give in a real fit."""

from __future__ import annotations

import itertools
import math

import pytest
import pytorch_lightning as pl
import torch
from conftest import make_trainer
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader

from autotimm import (
    BackboneConfig,
    ImageClassifier,
    LinearWarmup,
    create_scheduler,
    list_schedulers,
    make_synthetic_dataset,
)
from autotimm.optim.schedulers import get_scheduler, step_scheduler

LR = 0.01
STEPS_PER_EPOCH = 4
TINY_BACKBONE = BackboneConfig("test_resnet", pretrained=False)
SCHEDULERS = ["none", "cosine", "onecycle", "step", "multistep", "exponential", "plateau", "cosine_with_restarts"]
CAWR = "torch.optim.lr_scheduler.CosineAnnealingWarmRestarts"

pytestmark = [
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
    pytest.mark.usefixtures("single_thread"),
]


class LRRecorder(pl.Callback):
    """The learning rate each optimizer step uses, and the epoch it falls in."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.epochs: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.epochs.append(trainer.current_epoch)

    def per_epoch(self) -> list[float]:
        """One learning rate per epoch, asserting it never changed within an epoch."""
        values = []
        for epoch in sorted(set(self.epochs)):
            lrs = [lr for lr, e in zip(self.lrs, self.epochs, strict=True) if e == epoch]
            assert len(lrs) == STEPS_PER_EPOCH
            assert lrs == [lrs[0]] * len(lrs), f"lr changed within epoch {epoch}: {lrs}"
            values.append(lrs[0])
        return values


def _loader() -> DataLoader:
    data = make_synthetic_dataset(num_classes=2, samples_per_class=STEPS_PER_EPOCH * 2, image_size=16)
    return DataLoader(data, batch_size=4)


def _classifier(scheduler=None, scheduler_kwargs=None, **kwargs) -> ImageClassifier:
    pl.seed_everything(0, verbose=False)
    options = dict(num_classes=2, lr=LR, optimizer="sgd", scheduler=scheduler, scheduler_kwargs=scheduler_kwargs)
    options.update(kwargs)
    return ImageClassifier(TINY_BACKBONE, **options)


def _fit(
    model: ImageClassifier, epochs: int = 3, val: bool = False, ckpt_path=None, **trainer_kwargs
) -> tuple[pl.Trainer, LRRecorder]:
    recorder = LRRecorder()
    options = dict(limit_train_batches=STEPS_PER_EPOCH, limit_val_batches=1 if val else 0, callbacks=[recorder])
    options.update(trainer_kwargs)
    trainer = make_trainer(max_epochs=epochs, **options)
    trainer.fit(model, _loader(), _loader() if val else None, ckpt_path=ckpt_path)
    return trainer, recorder


def _optimizer(lr: float = LR, cls=torch.optim.SGD) -> torch.optim.Optimizer:
    return cls(nn.Linear(2, 2).parameters(), lr=lr)


def _reference(name: str, kwargs: dict | None, steps: int) -> list[float]:
    """The lr trajectory of the per-step schedule ``name`` over ``steps`` steps, with no warm-up and no trainer."""
    optimizer = _optimizer()
    [config] = create_scheduler(optimizer, name, kwargs, total_steps=steps, steps_per_epoch=STEPS_PER_EPOCH)
    assert config["interval"] == "step"
    lrs = []
    for step in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradients: a no-op, but torch wants it before the scheduler steps
        step_scheduler(config["scheduler"], None, step + 1, step // STEPS_PER_EPOCH)
    return lrs


def _approx(values: list[float]):
    return pytest.approx(values, rel=1e-9, abs=1e-12)


def _assert_linear_rise(lrs: list[float], target: float) -> None:
    """``lrs`` rise by a constant step from ``target / (n + 1)`` and the next value would be ``target``."""
    n = len(lrs)
    assert lrs == _approx([target * (i + 1) / (n + 1) for i in range(n)])
    diffs = [b - a for a, b in zip(lrs, [*lrs[1:], target], strict=True)]
    assert all(d > 0 for d in diffs)
    assert diffs == pytest.approx([diffs[0]] * n, rel=1e-9)


# ------------------------------------------------------------------ registry


def test_list_schedulers_and_lookup():
    assert list_schedulers()[: len(SCHEDULERS)] == SCHEDULERS  # user-registered names come after
    assert get_scheduler(None) is get_scheduler("none") is get_scheduler("NONE")
    assert get_scheduler("Cosine") is get_scheduler("cosine")


def test_unknown_scheduler_name_lists_the_accepted_names():
    accepted = "Accepted names: " + ", ".join(SCHEDULERS)
    with pytest.raises(
        ValueError, match=r"Unknown scheduler 'cosin' for argument `scheduler`\. Did you mean 'cosine'"
    ) as info:
        create_scheduler(_optimizer(), "cosin", total_steps=10)
    assert accepted in str(info.value)
    with pytest.raises(ValueError, match=r"Unknown scheduler 'linear' for argument `scheduler`.*" + accepted):
        ImageClassifier(TINY_BACKBONE, num_classes=2, scheduler="linear")
    with pytest.raises(ValueError, match=r"`scheduler` must be a name, a dict or None, got int"):
        create_scheduler(_optimizer(), 3)
    with pytest.raises(ValueError, match=r"`scheduler_kwargs` must be a dict or None, got \[1\]"):
        ImageClassifier(TINY_BACKBONE, num_classes=2, scheduler_kwargs=[1])


@pytest.mark.parametrize("name", ["cosine", "onecycle", "cosine_with_restarts"])
@pytest.mark.parametrize("total_steps", [None, float("inf"), 0])
def test_per_step_schedulers_need_a_known_run_length(name, total_steps):
    with pytest.raises(ValueError, match=rf"scheduler '{name}' steps per batch and needs a finite training length"):
        create_scheduler(_optimizer(), name, total_steps=total_steps)


def test_factories_build_the_promised_schedulers_and_intervals():
    def build(name, kwargs=None, optimizer=None):
        [config] = create_scheduler(optimizer or _optimizer(), name, kwargs, total_steps=30, steps_per_epoch=3)
        return config

    assert create_scheduler(_optimizer(), None) == create_scheduler(_optimizer(), "none") == []
    config = build("cosine")
    assert isinstance(config["scheduler"], lr_scheduler.CosineAnnealingLR) and config["interval"] == "step"
    assert config["scheduler"].T_max == 30
    config = build("onecycle")
    assert isinstance(config["scheduler"], lr_scheduler.OneCycleLR) and config["interval"] == "step"
    assert config["scheduler"].total_steps == 30 and config["scheduler"].cycle_momentum
    # Adagrad has neither momentum nor betas to cycle.
    assert not build("onecycle", optimizer=_optimizer(cls=torch.optim.Adagrad))["scheduler"].cycle_momentum
    config = build("step")  # 10 epochs -> decay every 3
    assert isinstance(config["scheduler"], lr_scheduler.StepLR) and config["interval"] == "epoch"
    assert (config["scheduler"].step_size, config["scheduler"].gamma) == (3, 0.1)
    config = build("multistep")
    assert config["scheduler"].milestones == {5: 1, 8: 1} and config["interval"] == "epoch"
    config = build("exponential")
    assert config["scheduler"].gamma == 0.9 and config["interval"] == "epoch"
    config = build("plateau")
    assert isinstance(config["scheduler"], lr_scheduler.ReduceLROnPlateau)
    assert (config["interval"], config["monitor"], config["scheduler"].mode) == ("epoch", "val/loss", "min")
    config = build("plateau", {"monitor": "val/accuracy", "patience": 2})
    assert (config["monitor"], config["scheduler"].mode, config["scheduler"].patience) == ("val/accuracy", "max", 2)
    config = build("cosine_with_restarts", {"num_cycles": 2})
    assert isinstance(config["scheduler"], CosineLRScheduler) and config["interval"] == "step"
    assert config["scheduler"].t_initial == 15 and not config["scheduler"].t_in_epochs


@pytest.mark.parametrize(
    ("name", "kwargs", "rejected"),
    [
        ("step", {"bogus": 1}, "['bogus']"),
        ("cosine", {"T_max": 5, "warm": 2}, "['T_max', 'warm']"),
        ("none", {"gamma": 0.5}, "['gamma']"),
        ("plateau", {"bogus": 1}, "['bogus']"),
        ("cosine_with_restarts", {"bogus": 1}, "['bogus']"),
    ],
)
def test_arguments_a_scheduler_does_not_take_raise_value_error(name, kwargs, rejected):
    with pytest.raises(
        ValueError, match=rf"scheduler '{name}' rejected `scheduler_kwargs` {rejected!s}".replace("[", r"\[")
    ):
        create_scheduler(_optimizer(), name, kwargs, total_steps=12, steps_per_epoch=4)


# ------------------------------------------------- trajectories inside a fit


@pytest.mark.parametrize(
    ("name", "kwargs", "factors"),
    [
        ("step", None, [1, 0.1, 0.01]),  # 3 epochs: step_size 1, gamma 0.1
        ("step", {"step_size": 2, "gamma": 0.5}, [1, 1, 0.5]),
        ("multistep", None, [1, 1, 0.1]),  # 3 epochs: milestone at epoch 2
        ("multistep", {"milestones": [1, 2], "gamma": 0.5}, [1, 0.5, 0.25]),
        ("exponential", None, [1, 0.9, 0.81]),
    ],
)
def test_per_epoch_schedulers_change_lr_only_at_epoch_boundaries(name, kwargs, factors):
    trainer, recorder = _fit(_classifier(name, kwargs), epochs=3)
    assert trainer.global_step == 3 * STEPS_PER_EPOCH
    [config] = trainer.lr_scheduler_configs
    assert config.interval == "epoch"
    assert recorder.per_epoch() == _approx([LR * f for f in factors])


def test_plateau_steps_once_per_epoch_on_val_loss():
    # An absolute threshold no loss can beat: the first epoch sets the best value, every later
    # epoch counts as no improvement and, with patience 0, halves the learning rate.
    kwargs = {"patience": 0, "factor": 0.5, "threshold": 1e9, "threshold_mode": "abs"}
    trainer, recorder = _fit(_classifier("plateau", kwargs), epochs=4, val=True)
    [config] = trainer.lr_scheduler_configs
    assert (config.interval, config.monitor, config.reduce_on_plateau) == ("epoch", "val/loss", True)
    assert recorder.per_epoch() == _approx([LR, LR, LR / 2, LR / 4])
    assert config.scheduler.last_epoch == 4  # stepped once per epoch


def test_plateau_default_patience_keeps_lr_in_a_short_run():
    # patience 10 (the default): no reduction in a 3-epoch run, however the loss moves.
    trainer, recorder = _fit(_classifier("plateau"), epochs=3, val=True)
    assert recorder.per_epoch() == [LR] * 3
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3


def test_cosine_decreases_every_step_to_zero_over_the_run():
    trainer, recorder = _fit(_classifier("cosine"), epochs=3)
    total = 3 * STEPS_PER_EPOCH
    assert recorder.lrs == _approx([LR * (1 + math.cos(math.pi * i / total)) / 2 for i in range(total)])
    assert all(b < a for a, b in itertools.pairwise(recorder.lrs))
    assert recorder.lrs[0] == LR
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_cosine_spans_max_steps_when_the_trainer_stops_on_steps():
    trainer, recorder = _fit(_classifier("cosine"), epochs=-1, max_steps=6)
    assert trainer.global_step == 6
    assert recorder.lrs == _approx([LR * (1 + math.cos(math.pi * i / 6)) / 2 for i in range(6)])


def test_onecycle_rises_then_falls_over_the_run():
    _, recorder = _fit(_classifier("onecycle"), epochs=3)
    lrs = recorder.lrs
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1
    assert all(b > a for a, b in itertools.pairwise(lrs[: peak + 1]))
    assert all(b < a for a, b in itertools.pairwise(lrs[peak:]))
    assert lrs[0] == pytest.approx(LR / 25)  # initial_lr = max_lr / div_factor
    assert max(lrs) > 0.9 * LR
    assert lrs[-1] == pytest.approx(LR / 25 / 1e4)  # min_lr at the last step
    assert lrs == _approx(_reference("onecycle", None, 3 * STEPS_PER_EPOCH))


def test_onecycle_with_adagrad_fits():
    trainer, recorder = _fit(_classifier("onecycle", optimizer="adagrad"), epochs=1)
    assert trainer.global_step == STEPS_PER_EPOCH
    assert recorder.lrs == _approx(_reference("onecycle", None, STEPS_PER_EPOCH))


def test_cosine_with_restarts_goes_back_up_at_each_restart():
    _, recorder = _fit(_classifier("cosine_with_restarts"), epochs=3)
    lrs = recorder.lrs
    cycle = 3 * STEPS_PER_EPOCH // 3  # three cycles by default
    for start in range(0, len(lrs), cycle):
        assert lrs[start] == pytest.approx(LR)
        part = lrs[start : start + cycle]
        assert all(b < a for a, b in itertools.pairwise(part))
        expected = [LR * (1 + math.cos(math.pi * t / cycle)) / 2 for t in range(cycle)]
        assert part == _approx(expected)
    assert lrs[cycle] > lrs[cycle - 1] and lrs[2 * cycle] > lrs[2 * cycle - 1]


@pytest.mark.parametrize("scheduler", [None, "none"])
def test_no_scheduler_keeps_the_learning_rate_constant(scheduler):
    trainer, recorder = _fit(_classifier(scheduler), epochs=2)
    assert trainer.lr_scheduler_configs == []
    assert recorder.lrs == [LR] * (2 * STEPS_PER_EPOCH)


# ------------------------------------------------------------------- warm-up


@pytest.mark.parametrize(
    ("name", "warmup", "warmup_steps"),
    [
        ("cosine", {"warmup_steps": 4}, 4),
        ("cosine", {"warmup_epochs": 1}, STEPS_PER_EPOCH),
        ("onecycle", {"warmup_steps": 3}, 3),
        ("cosine_with_restarts", {"warmup_steps": 5, "num_cycles": 2}, 5),
        ("none", {"warmup_steps": 5}, 5),
    ],
)
def test_warmup_rises_linearly_then_runs_the_main_schedule_from_its_start(name, warmup, warmup_steps):
    trainer, recorder = _fit(_classifier(name, warmup), epochs=3)
    total = 3 * STEPS_PER_EPOCH
    main_kwargs = {k: v for k, v in warmup.items() if not k.startswith("warmup_")}
    if name == "none":
        main = [LR] * (total - warmup_steps)
    else:
        main = _reference(name, main_kwargs, total - warmup_steps)
    lrs = recorder.lrs
    assert len(lrs) == total
    _assert_linear_rise(lrs[:warmup_steps], target=main[0])
    assert lrs[warmup_steps] == pytest.approx(main[0])  # the main schedule's start value, at step N
    assert lrs[warmup_steps:] == _approx(main)
    assert isinstance(trainer.lr_scheduler_configs[-1].scheduler, LinearWarmup)
    assert trainer.lr_scheduler_configs[-1].interval == "step"


def test_warmup_epochs_hold_back_a_per_epoch_scheduler():
    kwargs = {"warmup_epochs": 1, "step_size": 1, "gamma": 0.5}
    trainer, recorder = _fit(_classifier("step", kwargs), epochs=3)
    _assert_linear_rise(recorder.lrs[:STEPS_PER_EPOCH], target=LR)
    assert recorder.lrs[STEPS_PER_EPOCH:] == _approx([LR] * STEPS_PER_EPOCH + [LR / 2] * STEPS_PER_EPOCH)
    main = trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(main, lr_scheduler.StepLR) and main.last_epoch == 2  # never stepped during the warm-up


def test_warmup_steps_with_default_per_epoch_schedule_and_plateau():
    # 12 steps, 4 of warm-up: the "step" schedule spans the 2 remaining epochs (step_size 1).
    _, recorder = _fit(_classifier("step", {"warmup_steps": 4}), epochs=3)
    assert recorder.lrs[STEPS_PER_EPOCH:] == _approx([LR] * STEPS_PER_EPOCH + [LR * 0.1] * STEPS_PER_EPOCH)
    kwargs = {"warmup_epochs": 1, "patience": 0, "factor": 0.5, "threshold": 1e9, "threshold_mode": "abs"}
    trainer, recorder = _fit(_classifier("plateau", kwargs), epochs=4, val=True)
    _assert_linear_rise(recorder.lrs[:STEPS_PER_EPOCH], target=LR)
    assert recorder.lrs[STEPS_PER_EPOCH:] == _approx([LR] * 8 + [LR / 2] * 4)
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warmup_steps": 2, "warmup_epochs": 1}, r"`scheduler_kwargs` takes warmup_epochs or warmup_steps, not both"),
        ({"warmup_steps": 12}, r"warm-up of 12 steps is not shorter than the whole run of 12 steps"),
        ({"warmup_steps": 50}, r"warm-up of 50 steps is not shorter than the whole run of 12 steps"),
        ({"warmup_epochs": 3}, r"warm-up of 12 steps is not shorter than the whole run of 12 steps"),
        ({"warmup_steps": -1}, r"`scheduler_kwargs` warmup_steps must be a non-negative int, got -1"),
        ({"warmup_epochs": 0.5}, r"`scheduler_kwargs` warmup_epochs must be a non-negative int, got 0.5"),
    ],
)
def test_bad_warmups_raise_value_error(kwargs, message):
    for name in ("cosine", "step", "none"):
        with pytest.raises(ValueError, match=message):
            create_scheduler(_optimizer(), name, kwargs, total_steps=12, steps_per_epoch=STEPS_PER_EPOCH)


def test_warmup_epochs_need_the_epoch_length():
    with pytest.raises(ValueError, match="warmup_epochs needs a known number of steps per epoch"):
        create_scheduler(_optimizer(), "step", {"warmup_epochs": 1})
    # warmup_steps needs no trainer; the input dict is not consumed.
    kwargs = {"warmup_steps": 3, "gamma": 0.5}
    configs = create_scheduler(_optimizer(), "exponential", kwargs)
    assert [type(c["scheduler"]) for c in configs] == [lr_scheduler.ExponentialLR, LinearWarmup]
    assert kwargs == {"warmup_steps": 3, "gamma": 0.5}


def test_warmup_as_long_as_the_run_fails_the_fit():
    model = _classifier("cosine", {"warmup_epochs": 2})
    with pytest.raises(ValueError, match="warm-up of 8 steps is not shorter than the whole run of 8 steps"):
        _fit(model, epochs=2)
    with pytest.raises(ValueError, match="not both"):  # caught at construction already
        _classifier("cosine", {"warmup_steps": 1, "warmup_epochs": 1})


# ------------------------------------------------------------------ dict form


def test_dict_form_cosine_warm_restarts_steps_per_epoch_by_default():
    spec = {"class": CAWR, "params": {"T_0": 10}}
    trainer, recorder = _fit(_classifier(spec), epochs=3)
    [config] = trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, lr_scheduler.CosineAnnealingWarmRestarts)
    assert config.interval == "epoch"
    assert recorder.per_epoch() == _approx([LR * (1 + math.cos(math.pi * e / 10)) / 2 for e in range(3)])


def test_dict_form_per_step_interval_and_scheduler_kwargs_override_params():
    spec = {"class": CAWR, "params": {"T_0": 10}, "interval": "step"}
    trainer, recorder = _fit(_classifier(spec, {"T_0": 4}), epochs=2)
    assert trainer.lr_scheduler_configs[0].interval == "step"
    cycle = [LR * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)]
    assert recorder.lrs == _approx(cycle * 2)  # restarts every 4 steps


def test_dict_form_timm_scheduler_counts_epochs_from_the_end_of_warmup():
    spec = {"class": "timm.scheduler.StepLRScheduler", "params": {"decay_t": 1, "decay_rate": 0.5}}
    _, recorder = _fit(_classifier(spec), epochs=3)
    assert recorder.per_epoch() == _approx([LR, LR / 2, LR / 4])
    _, recorder = _fit(_classifier(spec, {"warmup_epochs": 1}), epochs=3)
    _assert_linear_rise(recorder.lrs[:STEPS_PER_EPOCH], target=LR)
    assert recorder.lrs[STEPS_PER_EPOCH:] == _approx([LR] * STEPS_PER_EPOCH + [LR / 2] * STEPS_PER_EPOCH)


def test_dict_form_defaults_interval_and_monitor_from_the_scheduler():
    optimizer = _optimizer()
    per_step = {"class": "timm.scheduler.CosineLRScheduler", "params": {"t_initial": 10, "t_in_epochs": False}}
    assert create_scheduler(optimizer, per_step)[0]["interval"] == "step"
    per_epoch = {"class": "timm.scheduler.CosineLRScheduler", "params": {"t_initial": 10}}
    assert create_scheduler(_optimizer(), per_epoch)[0]["interval"] == "epoch"
    [config] = create_scheduler(_optimizer(), {"class": "torch.optim.lr_scheduler.ReduceLROnPlateau"})
    assert (config["interval"], config["monitor"]) == ("epoch", "val/loss")
    spec = {"class": "torch.optim.lr_scheduler.ReduceLROnPlateau", "params": {"mode": "max"}, "monitor": "val/f1"}
    [config] = create_scheduler(_optimizer(), spec)
    assert config["monitor"] == "val/f1" and config["scheduler"].mode == "max"


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        (
            {"class": CAWR, "params": {"T_0": 10}},
            {"bogus": 1},
            r"scheduler '.*CosineAnnealingWarmRestarts' rejected `scheduler_kwargs` \['bogus'\]",
        ),
        ({"class": CAWR}, None, r"rejected `scheduler_kwargs` \[\]: .*T_0"),
        (
            {"params": {"T_0": 10}},
            None,
            r"`scheduler` dict must have the key 'class' and optionally 'params', 'interval', 'monitor', "
            r"got \['params'\]",
        ),
        ({"class": CAWR, "every": "epoch"}, None, r"got \['class', 'every'\]"),
        (
            {"class": CAWR, "params": {"T_0": 10}, "interval": "batch"},
            None,
            r"`scheduler` interval must be 'step' or 'epoch', got 'batch'",
        ),
        (
            {"class": "torch.optim.lr_scheduler.NoSuchLR"},
            None,
            r"module 'torch.optim.lr_scheduler' has no attribute 'NoSuchLR'",
        ),
        (
            {"class": "no_such_package_xyz.LR"},
            None,
            r"`scheduler` class 'no_such_package_xyz.LR': cannot import module",
        ),
        ({"class": "CosineAnnealingLR"}, None, r"`scheduler` class must be a dotted path"),
    ],
)
def test_bad_dict_forms_raise_value_errors(spec, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_scheduler(_optimizer(), spec, kwargs, total_steps=12, steps_per_epoch=STEPS_PER_EPOCH)


def test_bad_scheduler_kwargs_fail_the_fit_with_value_error():
    model = _classifier({"class": CAWR, "params": {"T_0": 10}}, {"T_zero": 3})
    with pytest.raises(ValueError, match=r"rejected `scheduler_kwargs` \['T_zero'\]"):
        _fit(model, epochs=1)


# ------------------------------------------------------- LinearWarmup itself


def test_linear_warmup_scales_every_group_then_leaves_the_optimizer_alone():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    optimizer = torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 0.1}, {"params": model[1].parameters()}], lr=0.4
    )
    warmup = LinearWarmup(optimizer, warmup_steps=3)
    seen = []
    for _ in range(3):
        assert not warmup.finished
        seen.append([group["lr"] for group in optimizer.param_groups])
        warmup.step()
    assert seen == [_approx([0.1 * k / 4, 0.4 * k / 4]) for k in (1, 2, 3)]
    assert warmup.finished
    assert [group["lr"] for group in optimizer.param_groups] == [0.1, 0.4]
    optimizer.param_groups[0]["lr"] = 0.05  # the main schedule owns the lr now
    warmup.step()
    assert optimizer.param_groups[0]["lr"] == 0.05 and warmup.last_step == 3


def test_linear_warmup_state_dict_round_trips(tmp_path):
    optimizer = _optimizer(lr=0.2)
    warmup = LinearWarmup(optimizer, warmup_steps=5)
    warmup.step()
    warmup.step()
    state = warmup.state_dict()
    assert state == {"warmup_steps": 5, "target_lrs": [0.2], "last_step": 2}
    # Checkpoints are loaded with weights_only=True: the state must be plain data.
    torch.save(state, tmp_path / "warmup.pt")
    loaded = torch.load(tmp_path / "warmup.pt", weights_only=True)

    # Resume as Lightning does: fresh optimizer and warm-up, then the optimizer's state, then the scheduler's.
    resumed_optimizer = _optimizer(lr=0.2)
    resumed = LinearWarmup(resumed_optimizer, warmup_steps=5)
    resumed_optimizer.load_state_dict(optimizer.state_dict())
    resumed.load_state_dict(loaded)
    assert resumed.state_dict() == state
    for _ in range(5):
        assert resumed_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
        warmup.step()
        resumed.step()
    assert resumed.finished and resumed_optimizer.param_groups[0]["lr"] == 0.2


def test_resumed_fit_continues_warmup_and_schedule_exactly(tmp_path):
    kwargs = {"warmup_steps": 6}
    trainer, full = _fit(_classifier("cosine", kwargs), epochs=3)
    assert trainer.global_step == len(full.lrs) == 3 * STEPS_PER_EPOCH

    class StopAfterFirstEpoch(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    part1 = LRRecorder()
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        limit_train_batches=STEPS_PER_EPOCH,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[part1, StopAfterFirstEpoch()],
    )
    trainer.fit(_classifier("cosine", kwargs), _loader())
    assert trainer.global_step == STEPS_PER_EPOCH
    ckpt = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(ckpt)
    _, part2 = _fit(_classifier("cosine", kwargs), epochs=3, ckpt_path=str(ckpt))
    assert part1.lrs + part2.lrs == _approx(full.lrs)
