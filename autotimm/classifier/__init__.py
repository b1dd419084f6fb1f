"""The classifier: `ImageClassifier` (a LightningModule), its fine-tuning options, load/save/predict, ensembles.

`load_model` loads any kind of trained model: a checkpoint, an ONNX export, an ensemble folder.
`ImageClassifier.save_pretrained` / `from_pretrained` / `push_to_hub` share it as a timm model folder.
"""

from typing import TYPE_CHECKING

from autotimm._lazy import lazy_exports

if TYPE_CHECKING:  # the public names, for type checkers and the API docs; at run time they load lazily
    from autotimm.classifier.ensemble import EnsembleClassifier
    from autotimm.classifier.loading import load_model
    from autotimm.classifier.module import ImageClassifier
    from autotimm.classifier.pretrained import HubUnavailableError

__getattr__, __dir__ = lazy_exports(globals())

__all__ = [
    "EnsembleClassifier",
    "HubUnavailableError",
    "ImageClassifier",
    "load_model",
]
