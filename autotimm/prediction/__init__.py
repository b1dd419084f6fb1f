"""Prediction without torch: inputs, preprocessing, the batched prediction loop, export metadata and `OnnxPredictor`.

Nothing here imports torch, timm or Lightning: ``OnnxPredictor`` runs with
numpy, Pillow and onnxruntime alone.
"""

from typing import TYPE_CHECKING

from autotimm._lazy import lazy_exports

if TYPE_CHECKING:  # the public names, for type checkers and the API docs; at run time they load lazily
    from autotimm.prediction.metadata import read_metadata
    from autotimm.prediction.onnx_predictor import OnnxPredictor
    from autotimm.prediction.predict import Prediction
    from autotimm.prediction.preprocess import Preprocessor

__getattr__, __dir__ = lazy_exports(globals())

__all__ = [
    "OnnxPredictor",
    "Prediction",
    "Preprocessor",
    "read_metadata",
]
