"""The classifier: `ImageClassifier` (a LightningModule), its fine-tuning options, load/save/predict, ensembles.

`load_model` loads any kind of trained model: a checkpoint, an ONNX export, an ensemble folder.
"""

from typing import TYPE_CHECKING

from autotimm._lazy import lazy_exports

if TYPE_CHECKING:  # the public names, for type checkers and the API docs; at run time they load lazily
    from autotimm.classifier.ensemble import EnsembleClassifier
    from autotimm.classifier.loading import load_model
    from autotimm.classifier.module import ImageClassifier

__getattr__, __dir__ = lazy_exports(globals())

__all__ = [
    "EnsembleClassifier",
    "ImageClassifier",
    "load_model",
]
