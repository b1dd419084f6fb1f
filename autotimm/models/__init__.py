"""Model building: a headless timm backbone, its head, its layers and stages, and torchvision weights for it."""

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
    from autotimm.models.profile import ModelProfile, profile_model
    from autotimm.models.stages import backbone_layers, backbone_stages
    from autotimm.models.torchvision_weights import (
        TORCHVISION_TO_TIMM,
        is_torchvision_state_dict,
        load_torchvision_weights,
        torchvision_model_kwargs,
        torchvision_to_timm,
    )

__getattr__, __dir__ = lazy_exports(globals())

__all__ = [
    "TORCHVISION_TO_TIMM",
    "BackboneConfig",
    "ClassificationHead",
    "ModelProfile",
    "PretrainedWeightsUnavailableError",
    "as_backbone_config",
    "backbone_layers",
    "backbone_stages",
    "check_model_name",
    "create_backbone",
    "is_torchvision_state_dict",
    "list_backbones",
    "load_torchvision_weights",
    "profile_model",
    "torchvision_model_kwargs",
    "torchvision_to_timm",
]
