"""Model profiles: parameters, size, MACs and measured latency of backbones or whole models, side by side."""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autotimm.checks import require_number
from autotimm.models.backbone import BackboneConfig, as_backbone_config, create_backbone

__all__ = ["ModelProfile", "count_macs", "profile_model", "profile_table"]


@dataclass
class ModelProfile:
    """What [`profile_model`][autotimm.models.profile.profile_model] measured for one model.

    Args:
        name: The backbone's name, or the model's class name.
        image_size: Input ``(channels, height, width)``.
        params: Number of parameters.
        trainable_params: Parameters with ``requires_grad``.
        size_mb_fp32: Size of the parameters and buffers in float32, in MB (10^6 bytes).
        size_mb_int8: Estimate for int8 weights: one byte per parameter, buffers as they are.
        gmacs: Multiply-accumulates of one image, in billions (FLOPs / 2, as timm publishes them).
        latency_ms: Median eager latency of one image, in milliseconds (``None`` when not measured).
        images_per_second: Eager throughput at ``batch_size`` (``None`` when not measured).
        batch_size: The batch of the throughput measurement.
        onnx_latency_ms: Median ONNX Runtime latency of one image (``None`` without onnxruntime).
        onnx_images_per_second: ONNX Runtime throughput at ``batch_size``.
    """

    name: str
    image_size: tuple[int, int, int]
    params: int
    trainable_params: int
    size_mb_fp32: float
    size_mb_int8: float
    gmacs: float
    latency_ms: float | None = None
    images_per_second: float | None = None
    batch_size: int = 32
    onnx_latency_ms: float | None = None
    onnx_images_per_second: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The profile as JSON-ready plain data."""
        data = asdict(self)
        data["image_size"] = list(self.image_size)
        return data


def count_macs(model: nn.Module, inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass, counted by ``torch.utils.flop_counter.FlopCounterMode``.

    PyTorch counts 2 FLOPs per multiply-accumulate of convolutions and matrix
    products (and nothing for element-wise operations, as fvcore and timm do).

    Args:
        model: The model; run in eval mode under ``no_grad``, its mode restored after.
        inputs: The input batch.

    Returns:
        The MACs of the whole batch.

    Example:
        >>> count_macs(nn.Linear(3, 2, bias=False), torch.zeros(1, 3))
        6
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(inputs)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def _median_seconds(run: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _eager_timing(model: nn.Module, size: tuple[int, int, int], batch_size: int, repeats: int) -> tuple[float, float]:
    one, batch = torch.randn(1, *size), torch.randn(batch_size, *size)
    with torch.inference_mode():
        single = _median_seconds(lambda: model(one), repeats)
        many = _median_seconds(lambda: model(batch), max(1, repeats // 4), warmup=1)
    return single * 1000, batch_size / many


def _onnx_timing(
    model: nn.Module, size: tuple[int, int, int], batch_size: int, repeats: int
) -> tuple[float | None, float | None]:
    """ONNX Runtime latency and throughput, or ``(None, None)`` when onnxruntime (or the export) is unavailable.

    Exported in memory with ``torch.onnx.export`` directly: the full exporter (``autotimm.exporting``)
    sits above this layer and adds metadata and parity checks a profile does not need.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None, None
    buffer = io.BytesIO()
    try:
        torch.onnx.export(
            model,
            (torch.randn(1, *size),),
            buffer,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            dynamo=False,
        )
    except Exception:  # an architecture the exporter cannot trace: no ONNX figures rather than no profile
        return None, None
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    one = torch.randn(1, *size).numpy()
    batch = torch.randn(batch_size, *size).numpy()
    single = _median_seconds(lambda: session.run(None, {"input": one}), repeats)
    many = _median_seconds(lambda: session.run(None, {"input": batch}), max(1, repeats // 4), warmup=1)
    return single * 1000, batch_size / many


def _as_model(backbone_or_model: str | BackboneConfig | nn.Module) -> tuple[str, nn.Module]:
    if isinstance(backbone_or_model, nn.Module):
        config = getattr(getattr(backbone_or_model, "hparams", None), "get", lambda key: None)("backbone")
        name = (config or {}).get("model_name") if isinstance(config, dict) else None
        return name or type(backbone_or_model).__name__, backbone_or_model
    if isinstance(backbone_or_model, str):
        backbone_or_model = BackboneConfig(backbone_or_model, pretrained=False)
    config = as_backbone_config(backbone_or_model)
    return config.model_name, create_backbone(config)


def _input_size(model: nn.Module, image_size: int | Sequence[int] | None) -> tuple[int, int, int]:
    channels = int(
        getattr(model, "in_chans", None) or (getattr(model, "pretrained_cfg", None) or {}).get("in_chans", 3)
    )
    if image_size is None:
        default = (getattr(model, "pretrained_cfg", None) or {}).get("input_size") or (channels, 224, 224)
        return int(default[0]), int(default[1]), int(default[2])
    if isinstance(image_size, int):
        require_number("image_size", image_size, 1, integer=True)
        return channels, image_size, image_size
    size = tuple(int(v) for v in image_size)
    if len(size) == 2:
        return channels, size[0], size[1]
    if len(size) == 3:
        return size  # type: ignore[return-value]
    raise ValueError(f"`image_size` must be an int, (height, width) or (channels, height, width); got {image_size!r}")


def profile_model(
    backbone_or_model: str | BackboneConfig | nn.Module | Sequence[str | BackboneConfig | nn.Module],
    image_size: int | Sequence[int] | None = None,
    batch_size: int = 32,
    latency: bool = True,
    onnx: bool = True,
    repeats: int = 20,
) -> ModelProfile | list[ModelProfile]:
    """Profile one model or several side by side: parameters, size, MACs, and measured latency.

    A name or [`BackboneConfig`][autotimm.BackboneConfig] is built headless
    with random weights (``pretrained=False``: nothing is downloaded); an
    ``nn.Module`` (e.g. an [`ImageClassifier`][autotimm.ImageClassifier]) is
    profiled as it is, head included. MACs are counted with PyTorch's own
    ``FlopCounterMode`` (no extra dependency). Latency runs on the CPU, with
    all of torch's threads, in eval mode under ``inference_mode``: the median
    of ``repeats`` single-image runs, and images per second at
    ``batch_size``; with onnxruntime installed and ``onnx=True``, the same
    through ONNX Runtime.

    Args:
        backbone_or_model: A timm name, a ``BackboneConfig``, a model, or a list of them.
        image_size: Input size: an int (square), ``(height, width)`` or
            ``(channels, height, width)``; ``None``: the backbone's default (else 224).
        batch_size: Batch of the throughput measurement (>= 1).
        latency: Measure latency and throughput (the slow part); ``False`` for counts only.
        onnx: Also measure ONNX Runtime, when it is installed.
        repeats: Timed runs of one image (>= 1); the batch runs a quarter as often.

    Returns:
        A [`ModelProfile`][autotimm.models.profile.ModelProfile], or a list for a list.

    Raises:
        ValueError: An unknown model name or an argument out of range.

    Example:
        >>> profile = profile_model("resnet18", image_size=224, latency=False)  # doctest: +SKIP
        >>> round(profile.gmacs, 2), round(profile.params / 1e6, 1)  # doctest: +SKIP
        (1.81, 11.2)
    """
    require_number("batch_size", batch_size, 1, integer=True)
    require_number("repeats", repeats, 1, integer=True)
    if isinstance(backbone_or_model, (list, tuple)):
        return [
            profile_model(item, image_size, batch_size, latency, onnx, repeats)  # type: ignore[misc]
            for item in backbone_or_model
        ]
    name, model = _as_model(backbone_or_model)  # type: ignore[arg-type]
    size = _input_size(model, image_size)
    was_training = model.training
    model.eval()
    try:
        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
        device = next(model.parameters()).device
        macs = count_macs(model, torch.zeros(1, *size, device=device))
        profile = ModelProfile(
            name=name,
            image_size=size,
            params=params,
            trainable_params=trainable,
            size_mb_fp32=(params * 4 + buffer_bytes) / 1e6,
            size_mb_int8=(params + buffer_bytes) / 1e6,
            gmacs=macs / 1e9,
            batch_size=batch_size,
        )
        if latency:
            cpu = model.to("cpu") if device.type != "cpu" else model
            profile.latency_ms, profile.images_per_second = _eager_timing(cpu, size, batch_size, repeats)
            if onnx:
                profile.onnx_latency_ms, profile.onnx_images_per_second = _onnx_timing(cpu, size, batch_size, repeats)
            model.to(device)
    finally:
        model.train(was_training)
    return profile


def profile_table(profiles: Sequence[ModelProfile], title: str = "Model profile") -> Any:
    """The profiles as a rich ``Table``, one row per model (columns without any value are left out).

    Args:
        profiles: What [`profile_model`][autotimm.models.profile.profile_model] returned.
        title: The table's title.

    Returns:
        A ``rich.table.Table``.
    """
    from rich.table import Table

    def number(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    sizes = {p.image_size for p in profiles}
    batches = {p.batch_size for p in profiles}
    batch = f" @{next(iter(batches))}" if len(batches) == 1 else ""
    if len(sizes) == 1:  # one input size: said once, in the title
        title = f"{title} ({'x'.join(map(str, next(iter(sizes))))})"
    columns: list[tuple[str, Callable[[ModelProfile], str], bool]] = [
        ("Model", lambda p: p.name, True),
        ("Input", lambda p: "x".join(map(str, p.image_size)), len(sizes) > 1),
        ("Params", lambda p: f"{p.params / 1e6:.2f}M", True),
        (
            "Trainable",
            lambda p: f"{p.trainable_params / 1e6:.2f}M",
            any(p.trainable_params != p.params for p in profiles),
        ),
        ("MB fp32", lambda p: f"{p.size_mb_fp32:.1f}", True),
        ("MB int8", lambda p: f"{p.size_mb_int8:.1f}", True),
        ("GMACs", lambda p: f"{p.gmacs:.3f}", True),
        ("ms/img", lambda p: number(p.latency_ms, ".1f"), any(p.latency_ms is not None for p in profiles)),
        (
            f"img/s{batch}",
            lambda p: number(p.images_per_second, ".1f") + ("" if batch else f" @{p.batch_size}"),
            any(p.images_per_second is not None for p in profiles),
        ),
        ("ONNX ms", lambda p: number(p.onnx_latency_ms, ".1f"), any(p.onnx_latency_ms is not None for p in profiles)),
        (
            f"ONNX img/s{batch}",
            lambda p: number(p.onnx_images_per_second, ".1f"),
            any(p.onnx_images_per_second is not None for p in profiles),
        ),
    ]
    table = Table(title=title, title_justify="left")
    shown = [(header, cell) for header, cell, keep in columns if keep]
    rows = [[cell(profile) for _, cell in shown] for profile in profiles]
    for index, (header, _) in enumerate(shown):
        # Cells keep their width (numbers never get cut); headers wrap instead.
        width = max(len(row[index]) for row in rows) if rows else None
        table.add_column(header, justify="left" if index == 0 else "right", min_width=width)
    for row in rows:
        table.add_row(*row)
    return table
