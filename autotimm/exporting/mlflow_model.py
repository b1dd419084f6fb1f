"""A trained model as an MLflow ``pyfunc`` model: ``mlflow.pyfunc.load_model(uri).predict(images)``.

[`log_mlflow_model`][autotimm.exporting.mlflow_model.log_mlflow_model] logs a
``.ckpt`` checkpoint, an ``.onnx`` export or an ensemble folder into an MLflow
run as a ``pyfunc`` model whose ``predict`` returns, per image, the class names
and probabilities (a pandas DataFrame). MLflow's own PyTorch flavour would
return bare logits without class names or preprocessing, hence this small
``PythonModel`` around [`load_model`][autotimm.classifier.loading.load_model].

An ``.onnx`` export is served through ONNX Runtime by the same wrapper (an
[`OnnxPredictor`][autotimm.prediction.onnx_predictor.OnnxPredictor] inside, so
its predictions equal ``OnnxPredictor.predict``): the logged model then
requires ``onnxruntime`` rather than torch, and also carries MLflow's own
``onnx`` flavour over the same file (when the ``onnx`` package is installed),
so ``mlflow.onnx.load_model(uri)`` returns the ONNX graph itself.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from autotimm.classifier.loading import load_model

try:
    import pandas as pd  # MLflow's own dependency
    from mlflow.pyfunc import PythonModel
except ImportError:  # the mlflow extra is not installed: log_mlflow_model says so
    PythonModel = object  # type: ignore[assignment,misc]

__all__ = ["ClassifierPyfunc", "log_mlflow_model"]


def _images(model_input: Any) -> list[Any]:
    """Images from what pyfunc hands over: a DataFrame (first column), a Series, a list, an array or one image."""
    import numpy as np

    if hasattr(model_input, "iloc") and hasattr(model_input, "columns"):  # DataFrame
        model_input = model_input.iloc[:, 0].tolist()
    elif hasattr(model_input, "tolist") and not isinstance(model_input, np.ndarray):  # Series
        model_input = model_input.tolist()
    if isinstance(model_input, np.ndarray) and model_input.ndim == 4:
        return list(model_input)
    items = list(model_input) if isinstance(model_input, (list, tuple)) else [model_input]
    out = []
    for item in items:
        if isinstance(item, (bytes, bytearray)):  # encoded image files, e.g. from a REST payload
            from PIL import Image

            item = Image.open(io.BytesIO(item)).convert("RGB")
        out.append(item)
    return out


class ClassifierPyfunc(PythonModel):  # type: ignore[misc,valid-type]
    """The MLflow ``PythonModel`` that wraps an autotimm model: images in, class names and probabilities out.

    Args:
        top_k: Classes per image (``None``: every class up to 5); a ``top_k`` param at predict time overrides it.
    """

    def __init__(self, top_k: int | None = 5) -> None:
        self.top_k = top_k
        self.model: Any = None

    def load_context(self, context: Any) -> None:
        """Load the model artifact (on the CPU)."""
        self.model = load_model(context.artifacts["model"], device="cpu")

    def model_multi_label(self) -> bool:
        """Whether the loaded model is multi-label (``top_k`` then caps the labels above the threshold)."""
        return bool(getattr(self.model, "multi_label", False) or getattr(self.model, "hparams", {}).get("multi_label"))

    # Typed DataFrame: MLflow then builds no input schema (images come as paths, bytes or arrays), and a list or an
    # array given to the pyfunc model's predict arrives as it is.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        """Predict images: file paths, encoded image bytes, ``(H, W, C)`` arrays, or a DataFrame of those.

        Returns:
            A pandas DataFrame, one row per image: ``label``, ``probability``
            (the top class), ``labels`` and ``probabilities`` (the top-k).
        """
        import pandas as pd

        top_k = (params or {}).get("top_k", self.top_k)
        if top_k is not None and not self.model_multi_label():
            top_k = min(int(top_k), len(self.model.class_names))
        predictions = self.model.predict(_images(model_input), top_k=top_k)
        return pd.DataFrame(
            {
                "label": [p.label for p in predictions],
                "probability": [p.probability for p in predictions],
                "labels": [list(p.labels) for p in predictions],
                "probabilities": [[float(v) for v in p.probabilities] for p in predictions],
            }
        )


def log_mlflow_model(
    model_path: str | os.PathLike[str],
    run_id: str | None = None,
    tracking_uri: str | None = None,
    name: str = "model",
    top_k: int | None = 5,
    registered_model_name: str | None = None,
) -> str:
    """Log a trained model into an MLflow run as a ``pyfunc`` model and return its URI.

    A ``.ckpt`` checkpoint or an ensemble folder is predicted with torch; an
    ``.onnx`` export through ONNX Runtime (its requirements are
    ``onnxruntime``, and its ``MLmodel`` also has the ``onnx`` flavour when the
    ``onnx`` package is installed).

    Args:
        model_path: A ``.ckpt`` checkpoint, an ``.onnx`` export or an ensemble folder.
        run_id: The run to log into (e.g. ``MLFlowLogger.run_id``); ``None``: the active run, or a new one.
        tracking_uri: The tracking URI of that run; ``None``: MLflow's current one.
        name: The model's name in the run.
        top_k: Classes per image that ``predict`` returns by default.
        registered_model_name: Also register it under this name in the model registry.

    Returns:
        The model URI, for ``mlflow.pyfunc.load_model(uri)``.

    Raises:
        ImportError: MLflow is not installed.
        FileNotFoundError: No such model file.
    """
    try:
        import mlflow
    except ImportError:
        raise ImportError("log_mlflow_model needs MLflow: pip install 'autotimm[mlflow]'") from None
    from autotimm._version import __version__
    from autotimm.classifier.loading import model_kind

    model_kind(os.fspath(model_path))  # fails now, with the accepted kinds, rather than when loading
    # mlflow.set_tracking_uri is global (and sets MLFLOW_TRACKING_URI): both are put back afterwards.
    previous, environment = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        active = mlflow.active_run()
        if active is not None and (run_id is None or active.info.run_id == run_id):
            info = _log(mlflow, model_path, name, top_k, registered_model_name, __version__)
        else:
            with mlflow.start_run(run_id=run_id):
                info = _log(mlflow, model_path, name, top_k, registered_model_name, __version__)
    finally:
        mlflow.set_tracking_uri(previous)
        if environment is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = environment
    return str(info.model_uri)


class _PyfuncWithOnnx:
    """A flavour "module" for ``mlflow.models.Model.log``: our pyfunc wrapper, plus MLflow's ``onnx`` flavour.

    Both flavours read the same ``.onnx`` artifact: ``mlflow.pyfunc.load_model``
    gets images in, class names out; ``mlflow.onnx.load_model`` the ONNX graph.
    """

    __name__ = "mlflow.onnx"

    @staticmethod
    def save_model(path: str, mlflow_model: Any, **kwargs: Any) -> None:
        """Save the pyfunc model into ``path``, then add the ``onnx`` flavour to its ``MLmodel``."""
        import mlflow

        mlflow.pyfunc.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
        try:
            import onnx
        except ImportError:  # only mlflow.onnx.load_model needs it: the pyfunc model runs on onnxruntime alone
            return
        data = mlflow_model.flavors["python_function"]["artifacts"]["model"]["path"]
        mlflow_model.add_flavor(
            "onnx",
            onnx_version=onnx.__version__,
            data=data,
            providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
            onnx_session_options=None,
            code=None,
        )
        mlflow_model.save(os.path.join(path, "MLmodel"))


def _log(mlflow: Any, path: Any, name: str, top_k: int | None, registered: str | None, version: str) -> Any:
    from autotimm.classifier.loading import model_kind

    # Explicit requirements: inferring them would import the model in a subprocess (slow, and needs the artifact).
    requirements = [f"autotimm=={version}"]
    arguments: dict[str, Any] = dict(
        name=name,
        python_model=ClassifierPyfunc(top_k),
        artifacts={"model": str(Path(path).resolve())},
        registered_model_name=registered,
    )
    if model_kind(os.fspath(path)) != "onnx":
        return mlflow.pyfunc.log_model(pip_requirements=requirements, **arguments)
    import onnxruntime

    requirements.append(f"onnxruntime=={onnxruntime.__version__}")
    return mlflow.models.Model.log(
        artifact_path=None,
        flavor=_PyfuncWithOnnx,
        flavor_name="onnx",
        pip_requirements=requirements,
        metadata={"autotimm_format": "onnx"},
        **arguments,
    )
