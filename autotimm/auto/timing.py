"""The time model of the search: measured training steps and data loading, turned into epoch times.

Before the search, each candidate backbone runs a few real training steps
(forward, backward, AdamW step) on a random batch of the search's batch size
and image size, and a few images go through the data pipeline. An epoch is
then estimated as ``steps * (step time + loading time) + validation steps *
(step time / 3 + loading time)``. After every run the estimate is corrected
by the ratio of its measured epoch time to the estimate (the median over the
runs so far), and the time a run spends outside its epochs is learned too, so
the plan adapts to the real speed of the machine.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from autotimm.models.backbone import BackboneConfig, PretrainedWeightsUnavailableError

__all__ = [
    "MEASURE_BATCH",
    "SMALL_MEASURE_PIXELS",
    "TRIAL_OVERHEAD",
    "TimeModel",
    "backbone_config",
    "cpu_has_bf16",
    "measure_loading",
    "measure_steps",
    "step_device",
]

#: Largest batch the step measurement runs (larger batches are scaled from it).
MEASURE_BATCH = 64
#: Images of at most this many pixels are measured at the whole batch: per-step costs dominate small steps,
#: so scaling a smaller batch up overestimates (2.2x for a 0.4 M-parameter ResNet at 28 px, batch 256).
SMALL_MEASURE_PIXELS = 64 * 64
#: Seconds one run costs beyond its epochs (trainer and model set-up, checkpoint files), before any run measured it.
TRIAL_OVERHEAD = 1.0


def _fixed_input_size(name: str) -> bool:
    """Whether a timm model needs its input size at build time (ViTs and other fixed-size models)."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name.split(".")[0])
    except (RuntimeError, KeyError, ValueError):
        return False
    return bool(getattr(cfg, "fixed_input_size", False))


def backbone_config(name: str, in_chans: int, image_size: int, pretrained: bool) -> BackboneConfig:
    """The `BackboneConfig` of a candidate: its channels, and the image size for models built for one size.

    Args:
        name: A timm model name.
        in_chans: 1 for grayscale data, else 3.
        image_size: The search's input size.
        pretrained: Load timm's pretrained weights.
    """
    extra = {"img_size": image_size} if _fixed_input_size(name) else {}
    return BackboneConfig(name, pretrained=pretrained, in_chans=in_chans, extra_kwargs=extra)


def step_device(trainer_kwargs: dict[str, Any]) -> torch.device:
    """The device trials will train on, as far as it can be told from the trainer arguments."""
    accelerator = str(trainer_kwargs.get("accelerator", "auto")).lower()
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if accelerator in ("mps", "auto") and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), so bf16 autocast speeds training up."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def _autocast(device: torch.device, precision: Any) -> AbstractContextManager:
    text = str(precision or "")
    if "bf16" in text:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if "16" in text and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_steps(
    configs: dict[str, BackboneConfig],
    num_classes: int,
    batch_size: int,
    image_size: tuple[int, int],
    device: torch.device,
    precision: Any = None,
    steps: int = 2,
    channels_last: bool = True,
) -> tuple[dict[str, float], dict[str, str]]:
    """Time training steps of each candidate.

    Steps run on at most ``MEASURE_BATCH`` images (the whole batch for images of
    at most ``SMALL_MEASURE_PIXELS``) and are scaled linearly to ``batch_size``
    (per-image cost is nearly constant on CPUs; on GPUs this
    overestimates, which the correction after the first trial removes).

    Args:
        configs: Candidate name -> its backbone config.
        num_classes: Classes of the data.
        batch_size: Images per step.
        image_size: Input ``(height, width)``.
        device: Where to run.
        precision: Lightning's precision string (``"bf16-mixed"`` runs under autocast).
        steps: Timed steps after two warm-up steps.
        channels_last: Build the models in channels-last memory format.

    Returns:
        ``(seconds per step, errors)``: candidates that could not be built
        or run are in ``errors`` with the reason, not in the timings.

    Raises:
        PretrainedWeightsUnavailableError: Pretrained weights were asked for and cannot be had.
    """
    from autotimm.classifier.module import ImageClassifier

    timings: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name, config in configs.items():
        try:
            model = ImageClassifier(config, num_classes=num_classes, channels_last=channels_last).to(device).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            small = image_size[0] * image_size[1] <= SMALL_MEASURE_PIXELS
            measured = batch_size if small else min(batch_size, MEASURE_BATCH)
            x = torch.randn(measured, config.in_chans, *image_size, device=device)
            y = torch.randint(0, num_classes, (measured,), device=device)

            def step(model: Any = model, optimizer: Any = optimizer, x: Any = x, y: Any = y) -> None:
                with _autocast(device, precision):
                    loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            for _ in range(2):  # warm-up: kernels are chosen and memory allocated in the first steps
                step()
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            _sync(device)
            timings[name] = (time.perf_counter() - start) / steps * batch_size / measured
        except PretrainedWeightsUnavailableError:
            raise
        except Exception as err:  # a model that does not fit the size, the memory or the channels
            errors[name] = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"
        finally:
            model = optimizer = x = y = None  # free before the next candidate
    return timings, errors


def measure_loading(datamodule: Any, images: int = 48) -> tuple[float, float]:
    """Seconds to decode and transform one image, for training and for validation.

    Args:
        datamodule: A set-up, configured data module with ``train`` and ``val`` splits.
        images: Images to time per split.
    """
    result = []
    for split in ("train", "val"):
        dataset = datamodule.dataset(split)
        count = min(images, len(dataset))
        batched = getattr(dataset, "__getitems__", None)  # datasets that load a whole batch at once
        if batched is not None:
            batched(list(range(min(8, count))))  # warm: the first call is ~3x slower than the rest
        start = time.perf_counter()
        if batched is not None:
            batched(list(range(count)))
        else:
            for index in range(count):
                dataset[index]
        result.append((time.perf_counter() - start) / max(count, 1))
    return result[0], result[1]


@dataclass
class TimeModel:
    """Estimated epoch and run times of the candidates, corrected by what runs really took.

    A run is estimated as ``overhead + epochs * factor * epoch estimate``:
    ``factor`` is the median ratio of measured to estimated epoch time over the
    runs so far (1 before any), ``overhead`` the median time a run spent
    outside its epochs (``TRIAL_OVERHEAD`` before any).

    Args:
        step_seconds: Measured seconds of one training step per candidate.
        batch_size: Images per step.
        load_train: Seconds to load one training image.
        load_eval: Seconds to load one validation image.
        workers: Data-loading worker processes (0: loading in the training process).
        world_size: Processes training together (each sees ``1/world_size`` of the batches).
    """

    step_seconds: dict[str, float]
    batch_size: int
    load_train: float
    load_eval: float
    workers: int = 0
    world_size: int = 1
    ratios: list[float] = field(default_factory=list)
    overheads: list[float] = field(default_factory=list)

    @property
    def factor(self) -> float:
        """Measured over estimated epoch time, the median over the runs so far (1 before any)."""
        return statistics.median(self.ratios) if self.ratios else 1.0

    @property
    def overhead(self) -> float:
        """Seconds a run spends outside its epochs, the median over the runs so far."""
        return statistics.median(self.overheads) if self.overheads else TRIAL_OVERHEAD

    def _raw_epoch(self, name: str, num_train: int, num_val: int) -> float:
        per_rank = self.batch_size * self.world_size
        share = 1.0 / max(self.workers, 1)  # worker processes load while the model trains
        train = math.ceil(num_train / per_rank) * (self.step_seconds[name] + self.batch_size * self.load_train * share)
        val = math.ceil(num_val / per_rank) * (self.step_seconds[name] / 3 + self.batch_size * self.load_eval * share)
        return train + val

    def epoch_seconds(self, name: str, num_train: int, num_val: int) -> float:
        """Estimated seconds of one epoch (training and validation) of ``name``."""
        return self._raw_epoch(name, num_train, num_val) * self.factor

    def epochs_within(self, name: str, seconds: float, num_train: int, num_val: int) -> int:
        """How many whole epochs of ``name`` fit into a run of ``seconds`` (after the run's overhead)."""
        epoch = self.epoch_seconds(name, num_train, num_val)
        return max(int((seconds - self.overhead) / epoch + 1e-6), 0)

    def observe(self, name: str, num_train: int, num_val: int, epoch_seconds: Sequence[float], seconds: float) -> None:
        """Record a finished run: its complete epochs took ``epoch_seconds``, the whole run ``seconds``."""
        if not epoch_seconds or name not in self.step_seconds:
            return
        self.ratios.append(statistics.median(epoch_seconds) / self._raw_epoch(name, num_train, num_val))
        self.overheads.append(max(seconds - sum(epoch_seconds), 0.0))

    def observe_batches(self, name: str, batch_seconds: float | None) -> None:
        """Record the measured time of a training batch (validation left out), e.g. from a short probe run."""
        if batch_seconds is None or name not in self.step_seconds:
            return
        share = 1.0 / max(self.workers, 1)
        self.ratios.append(batch_seconds / (self.step_seconds[name] + self.batch_size * self.load_train * share))

    def ranked(self, names: Sequence[str], num_train: int, num_val: int) -> dict[str, float]:
        """Epoch seconds of the given candidates, fastest first."""
        times = {n: self.epoch_seconds(n, num_train, num_val) for n in names if n in self.step_seconds}
        return dict(sorted(times.items(), key=lambda item: item[1]))
