"""Model building: a headless timm backbone, the classification head, and the backbone's layers and stages."""

from typing import TYPE_CHECKING

from autotimm._lazy import lazy_exports

if TYPE_CHECKING:  # the public names, for type checkers and the API docs; at run time they load lazily
    from autotimm.models.backbone import (
        BackboneConfig,
        PretrainedWeightsUnavailableError,
        as_backbone_config,
        check_model_name,
        create_backbone,
        list_backbones,
    )
    from autotimm.models.head import ClassificationHead
    from autotimm.models.stages import backbone_layers, backbone_stages

__getattr__, __dir__ = lazy_exports(globals())

__all__ = [
    "BackboneConfig",
    "ClassificationHead",
    "PretrainedWeightsUnavailableError",
    "as_backbone_config",
    "backbone_layers",
    "backbone_stages",
    "check_model_name",
    "create_backbone",
    "list_backbones",
]
