"""A timm backbone's parameters grouped bottom (stem) to top, as timm's ``model.group_matcher()`` groups them.

- *layers* (``coarse=False``) are what ``layer_decay`` scales, as in timm's
  ``param_groups_layer_decay`` (BEiT): for a ResNet the stem and every residual
  block, for a ViT the embeddings and every transformer block;
- *stages* (``coarse=True``) are what ``unfreeze_schedule`` unfreezes: for a
  ResNet the stem and ``layer1`` … ``layer4``, for a ViT the embeddings and
  every block. `backbone_stages` lists them for any backbone.
"""

from __future__ import annotations

from timm.models import group_parameters
from torch import nn

__all__ = ["backbone_layers", "backbone_stages"]


def backbone_layers(backbone: nn.Module, coarse: bool = False) -> list[list[str]]:
    """Parameter names of a timm backbone, grouped bottom (stem) to top.

    Args:
        backbone: A timm model (headless or not).
        coarse: ``False`` for timm's fine groups (blocks, used by layer decay),
            ``True`` for its coarse groups (stages, used by unfreezing).

    Returns:
        One list of parameter names per group, input side first. A model
        without ``group_matcher`` is one group.
    """
    names = [name for name, _ in backbone.named_parameters()]
    if not hasattr(backbone, "group_matcher"):
        return [names] if names else []
    layer_of = group_parameters(backbone, backbone.group_matcher(coarse=coarse), reverse=True)
    top = max(layer_of.values(), default=0)
    groups: list[list[str]] = [[] for _ in range(top + 1)]
    for name in names:
        groups[layer_of.get(name, top)].append(name)  # unmatched names join the top group, as in timm
    return [group for group in groups if group]


def backbone_stages(backbone: nn.Module) -> list[str]:
    """Short names of the stages `unfreeze_schedule` counts, bottom to top.

    Each name is the common prefix of the stage's parameters, e.g.
    ``["conv1+bn1", "layer1", "layer2", "layer3", "layer4"]`` for a ResNet.

    Example:
        >>> import timm
        >>> backbone_stages(timm.create_model("resnet18", num_classes=0))
        ['conv1+bn1', 'layer1', 'layer2', 'layer3', 'layer4']
    """
    labels = []
    for group in backbone_layers(backbone, coarse=True):
        common = []
        for pieces in zip(*(name.split(".")[:-1] for name in group), strict=False):
            if len(set(pieces)) > 1:
                break
            common.append(pieces[0])
        if common:
            labels.append(".".join(common))
        else:
            heads = list(dict.fromkeys(name.split(".")[0] for name in group))
            labels.append("+".join(heads[:4]) + ("+…" if len(heads) > 4 else ""))
    return labels
