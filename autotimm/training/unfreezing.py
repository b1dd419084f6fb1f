"""Progressive unfreezing: which backbone stages train from which epoch, with BatchNorm frozen with its stage."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from autotimm.checks import require_number
from autotimm.models.stages import backbone_layers

__all__ = ["UnfreezeSchedule", "freeze_norm_statistics"]


def freeze_norm_statistics(module: nn.Module) -> None:
    """Put every normalisation layer whose parameters are all frozen in eval mode, the others in ``module``'s mode.

    So BatchNorm running statistics stay fixed while its stage is frozen, and
    update again once it is unfrozen.
    """
    for norm in module.modules():
        if isinstance(norm, _NormBase):
            norm.train(module.training and any(p.requires_grad for p in norm.parameters(recurse=False)))


class UnfreezeSchedule:
    """When to make each backbone stage trainable: head first, then stages from the top.

    A schedule maps an epoch to the number of backbone stages (counted from
    the top, see `backbone_stages`) trainable from that epoch on, or ``"all"``.
    Before the first epoch listed only the head trains. ``{0: 0, 3: 1, 6:
    "all"}`` trains the head alone for 3 epochs, adds the last stage for 3
    more, then trains everything.

    Every parameter is in the optimizer from the start; a frozen one gets no
    gradient and so takes no step and no weight decay. The optimizer's groups
    and the scheduler's state (OneCycle's per-group rates included) are thus
    the same before and after each unfreeze step: there is nothing to rebuild.
    Frozen stages keep their BatchNorm statistics.

    Args:
        schedule: ``{epoch: stages}`` or a list of ``(epoch, stages)`` pairs;
            epochs are ints >= 0, stages ints >= 0 or ``"all"``, and never
            decreasing.

    Raises:
        ValueError: For a malformed schedule; the message names the bad entry.

    Example:
        >>> UnfreezeSchedule({0: 0, 2: 1, 4: "all"}).stages_at(3)
        1
    """

    def __init__(self, schedule: Mapping[Any, Any] | list[Any] | tuple[Any, ...]) -> None:
        self.steps = _parse_schedule(schedule)

    def stages_at(self, epoch: int) -> int | str:
        """Stages trainable in ``epoch`` (0-based): an int, or ``"all"``."""
        current: int | str = 0
        for start, stages in self.steps:
            if epoch >= start:
                current = stages
        return current

    def to_dict(self) -> dict[int, int | str]:
        """The schedule as plain data (for hyper-parameters)."""
        return dict(self.steps)

    def apply(self, model: nn.Module, epoch: int, backbone_attr: str = "backbone", norms: bool = True) -> list[str]:
        """Set ``requires_grad`` of the backbone's stages for ``epoch`` and the modes of their norms.

        Args:
            model: The model; its backbone is ``getattr(model, backbone_attr)``.
            epoch: The epoch about to start.
            backbone_attr: Attribute name of the backbone.
            norms: Also put the norms of frozen stages in eval mode (see `freeze_norm_statistics`).

        Returns:
            The names of the parameters of ``model`` that are trainable now.
        """
        backbone = getattr(model, backbone_attr)
        stages = backbone_layers(backbone, coarse=True)
        wanted = self.stages_at(epoch)
        count = len(stages) if wanted == "all" else min(int(wanted), len(stages))
        trainable = {name for group in stages[len(stages) - count :] for name in group}
        for name, param in backbone.named_parameters():
            param.requires_grad_(name in trainable)
        if norms:
            freeze_norm_statistics(backbone)
        return [name for name, p in model.named_parameters() if p.requires_grad]

    def __iter__(self) -> Iterator[tuple[int, int | str]]:
        return iter(self.steps)

    def __repr__(self) -> str:
        return f"UnfreezeSchedule({self.to_dict()!r})"


def _parse_schedule(schedule: Any) -> list[tuple[int, int | str]]:
    accepted = "{epoch: stages} or [(epoch, stages), ...] with int epochs >= 0 and int stages >= 0 or 'all'"
    if isinstance(schedule, UnfreezeSchedule):
        return list(schedule.steps)
    if isinstance(schedule, Mapping):
        pairs = list(schedule.items())
    elif isinstance(schedule, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in schedule):
        pairs = [tuple(p) for p in schedule]
    else:
        raise ValueError(f"`unfreeze_schedule` must be {accepted}, got {schedule!r}")
    if not pairs:
        raise ValueError(f"`unfreeze_schedule` is empty; it must be {accepted}")
    steps: list[tuple[int, int | str]] = []
    for epoch, stages in pairs:
        if isinstance(epoch, str) and epoch.isdigit():  # YAML/JSON keys arrive as strings
            epoch = int(epoch)
        require_number("unfreeze_schedule epoch", epoch, 0, integer=True, hint=f"the schedule is {accepted}")
        if stages != "all":
            hint = f"or 'all'; the schedule is {accepted}"
            require_number(f"unfreeze_schedule stages at epoch {epoch}", stages, 0, integer=True, hint=hint)
            stages = int(stages)
        steps.append((int(epoch), stages))
    steps.sort(key=lambda step: step[0])
    epochs = [epoch for epoch, _ in steps]
    if len(set(epochs)) != len(epochs):
        raise ValueError(f"`unfreeze_schedule` lists an epoch twice: {schedule!r}")
    levels = [float("inf") if stages == "all" else stages for _, stages in steps]
    if levels != sorted(levels):
        raise ValueError(f"`unfreeze_schedule` must never freeze again (stages must not decrease), got {schedule!r}")
    return steps
