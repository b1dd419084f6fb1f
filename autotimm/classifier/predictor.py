"""Using a trained classifier: its classes and preprocessing, load and save checkpoints, predict, calibrate.

[`ImageClassifier`][autotimm.ImageClassifier] inherits these methods from
`InferenceMixin`; the work is done by ``autotimm.prediction.predict`` (batching,
decoding) and ``autotimm.evaluation.calibration`` (temperature scaling).
"""

from __future__ import annotations

import os
import pickle
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from autotimm.classifier.arguments import check_class_names, check_class_weights, plain_data
from autotimm.data.transforms import backbone_in_chans, make_data_config
from autotimm.models.inference import InferenceCopy, inference_copy
from autotimm.prediction.inputs import collect_inputs
from autotimm.prediction.predict import Prediction, check_predict_arguments, compute_logits, decode
from autotimm.prediction.preprocess import Preprocessor, check_tta
from autotimm.training.checkpointing import atomic_save

__all__ = ["PRECISIONS", "InferenceMixin", "check_precision"]

#: ``predict``'s ``precision`` values and the dtypes they run in; ``None`` runs in the model's own dtype.
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}

# model -> {(device, dtype, optimize): (state key, inference copy or None)}; a copy is rebuilt when the weights change.
_COPIES: weakref.WeakKeyDictionary[Any, dict[tuple, tuple[Any, InferenceCopy | None]]] = weakref.WeakKeyDictionary()


def check_precision(precision: str | None) -> torch.dtype | None:
    """The dtype of a ``precision`` argument of ``predict``.

    Args:
        precision: ``None`` (the model's own dtype), ``"fp32"`` or ``"bf16"``.

    Returns:
        The dtype, or ``None``.

    Raises:
        ValueError: Any other value.
    """
    if precision is None:
        return None
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(
            f"`precision` must be None (the model's own dtype), {' or '.join(map(repr, PRECISIONS))}; got {precision!r}"
        )
    return PRECISIONS[precision]


def _state_key(model: Any) -> tuple | None:
    """What an inference copy depends on: the modules, and each tensor's storage and version (in-place updates)."""
    try:
        tensors = [*model.parameters(), *model.buffers()]
        return (
            tuple(id(m) for m in model.modules()),
            tuple((t.data_ptr(), t._version, t.dtype) for t in tensors),
        )
    except RuntimeError:  # inference tensors have no version counter: no caching
        return None


def _inference_forward(model: Any, example: torch.Tensor, dtype: torch.dtype | None, optimize: bool) -> Any:
    """The module to predict with: a cached inference copy of ``model``, or ``model`` itself."""
    device = example.device
    compiled = any(getattr(m, "_compile_mode", None) is not None for m in model.modules())  # compiles its own way
    optimize = optimize and device.type == "cpu" and not compiled
    own = next(model.parameters()).dtype
    dtype = own if dtype is None else dtype
    if not optimize and dtype == own:
        return None
    state, key = _state_key(model), (str(device), dtype, optimize)
    copies = _COPIES.setdefault(model, {})
    if state is not None and key in copies and copies[key][0] == state:
        return copies[key][1]
    for stale in [k for k, (s, _) in copies.items() if s != state or s is None]:
        del copies[stale]  # free copies of older weights before making the new one
    try:
        copy = inference_copy(model, example.to(own), dtype, optimize)
    except Exception as err:  # a model the tracer or deepcopy cannot handle: predict with it as it is
        if not optimize:
            raise
        warnings.warn(
            f"predict: could not make an optimized inference copy ({type(err).__name__}: {str(err)[:200]}); "
            "running the model as it is (pass optimize=False to skip the attempt)",
            RuntimeWarning,
            stacklevel=4,
        )
        copy = inference_copy(model, example.to(own), dtype, optimize=False)
    if state is not None:
        copies[key] = (state, copy)
    return copy


class InferenceMixin:
    """Load, save, predict and calibrate; mixed into [`ImageClassifier`][autotimm.ImageClassifier]."""

    @classmethod
    def load(cls, path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu") -> Any:
        """Load a classifier from a checkpoint, ready to predict (eval mode).

        Works with the checkpoints ``AutoTrainer`` writes and with `save`:
        class names, preprocessing and the calibration temperature come with
        the weights. Nothing is downloaded.

        Args:
            path: The ``.ckpt`` file.
            map_location: Where to put the weights: ``"cpu"``, ``"cuda"``, a device,
                or ``None`` for where they were saved.

        Returns:
            The classifier, in eval mode.

        Raises:
            FileNotFoundError: No such file.
            ValueError: Not an autotimm checkpoint, or a CUDA ``map_location`` without CUDA.
        """
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint not found: {os.fspath(path)!r}")
        if isinstance(map_location, (str, torch.device)) and not torch.cuda.is_available():
            if torch.device(map_location).type == "cuda":
                raise ValueError(f"`map_location` {str(map_location)!r}: CUDA is not available here; use 'cpu'")
        try:
            model = cls.load_from_checkpoint(os.fspath(path), map_location=map_location, weights_only=True)  # type: ignore[attr-defined]
        except (pickle.UnpicklingError, KeyError, EOFError, RuntimeError, AttributeError, TypeError) as err:
            reason = (str(err).strip().splitlines() or [""])[0][:200]
            raise ValueError(
                f"{os.fspath(path)!r} is not an autotimm checkpoint (one written by AutoTrainer or "
                f"ImageClassifier.save): {type(err).__name__}: {reason}"
            ) from err
        return model.eval()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a checkpoint that [`load`][autotimm.ImageClassifier.load] and ``load_from_checkpoint`` read.

        Use it after `calibrate`, or for a model trained outside ``AutoTrainer``.
        The file is written to a temporary name first, so a failure never
        leaves a half-written checkpoint.

        Args:
            path: The file to write; parent folders are created.

        Returns:
            The path written.

        Raises:
            ValueError: The model has no head yet (made without ``num_classes`` and not trained).
        """
        model: pl.LightningModule = self  # type: ignore[assignment]
        if model.hparams.num_classes is None:
            raise ValueError(
                "this ImageClassifier has no head yet (built without `num_classes`, not trained): train it first, "
                "or pass num_classes=..."
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint: dict[str, Any] = {
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            model.CHECKPOINT_HYPER_PARAMS_KEY: dict(model.hparams),
            "pytorch-lightning_version": pl.__version__,
        }
        model.on_save_checkpoint(checkpoint)
        atomic_save(checkpoint, path)
        return path

    def save_pretrained(self, directory: str | os.PathLike[str], **kwargs: Any) -> Path:
        """Write the model folder for sharing: ``model.safetensors``, timm's ``config.json``, a ``README.md`` card.

        Plain timm loads it (``timm.create_model("local-dir:DIR", pretrained=True)``, equal logits),
        [`from_pretrained`][autotimm.ImageClassifier.from_pretrained] loads it back exactly.

        Args:
            directory: The folder to write.
            **kwargs: ``license``, ``metrics``, ``training_data``, ``threshold``, ``repo_id``; see
                [`save_pretrained`][autotimm.classifier.pretrained.save_pretrained].

        Returns:
            The folder.
        """
        from autotimm.classifier.pretrained import save_pretrained

        return save_pretrained(self, directory, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        dir_or_hub_id: str | os.PathLike[str],
        map_location: str | torch.device = "cpu",
        revision: str | None = None,
        token: str | None = None,
    ) -> Any:
        """Load a model folder written by `save_pretrained`, from disk or the Hugging Face Hub.

        Args:
            dir_or_hub_id: A folder, or a Hub model id (``user/name`` or ``hf-hub:user/name``).
            map_location: Where the weights go.
            revision: The Hub revision.
            token: A Hub token for a private repository.

        Returns:
            The classifier, in eval mode; see
            [`load_pretrained`][autotimm.classifier.pretrained.load_pretrained].
        """
        from autotimm.classifier.pretrained import load_pretrained

        return load_pretrained(cls, dir_or_hub_id, map_location, revision, token)

    def push_to_hub(self, repo_id: str, private: bool = True, token: str | None = None, **kwargs: Any) -> str:
        """Upload the model folder to a Hugging Face Hub repository (created if missing); return its URL.

        Args:
            repo_id: ``name`` or ``user/name``.
            private: Create the repository private.
            token: A write token; ``None`` for the stored login or ``HF_TOKEN``.
            **kwargs: See [`push_to_hub`][autotimm.classifier.pretrained.push_to_hub].

        Returns:
            The repository URL.
        """
        from autotimm.classifier.pretrained import push_to_hub

        return push_to_hub(self, repo_id, private=private, token=token, **kwargs)

    def require_head(self) -> None:
        """Raise unless the model can predict; a model whose head is built with it (an ensemble) always can."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Accept checkpoints written before calibration existed (temperature 1)."""
        state = checkpoint.get("state_dict", {})
        state.setdefault("temperature", torch.ones(()))

    @property
    def preprocessor(self) -> Preprocessor:
        """The evaluation preprocessing from the stored data config (or the backbone's defaults)."""
        model: Any = self
        config = model.data_config
        if config is None:
            # A ViT built with its own img_size keeps timm's 224 in pretrained_cfg: use the built size.
            size = getattr(getattr(model.backbone, "patch_embed", None), "img_size", None)
            size = [int(v) for v in size] if isinstance(size, (tuple, list)) else None
            config = make_data_config(model.backbone, backbone_in_chans(model.backbone) or 3, size)
        return Preprocessor(config)

    @property
    def default_tta(self) -> str:
        """The test-time augmentation ``predict`` uses when given none: the ``tta`` hyper-parameter (``"none"``)."""
        return check_tta(getattr(self, "hparams", {}).get("tta") or "none")

    def predict_logits(
        self,
        inputs: Any,
        batch_size: int = 32,
        tta: bool | str | None = None,
        skip_bad_images: bool = False,
        progress: bool | None = None,
        precision: str | None = None,
        optimize: bool = True,
    ) -> tuple[np.ndarray, list[str | None]]:
        """Raw logits (before the temperature) for images, in inference mode.

        Args:
            inputs: As for [`predict`][autotimm.ImageClassifier.predict].
            batch_size: Images per forward pass.
            tta: Test-time augmentation; logits are averaged over the views.
                ``None``: the model's [`default_tta`][autotimm.ImageClassifier.default_tta].
            skip_bad_images: Skip unreadable files with a warning instead of raising.
            progress: Show a progress bar (``None``: for more than a few batches).
            precision: As for [`predict`][autotimm.ImageClassifier.predict].
            optimize: As for [`predict`][autotimm.ImageClassifier.predict].

        Returns:
            ``(logits, sources)``: float32 ``(N, num_classes)`` and each image's
            file path (``None`` for in-memory images), skipped images left out.

        Raises:
            ValueError: A bad ``precision`` or ``optimize``, and as for ``predict``.
        """
        model: Any = self
        dtype = check_precision(precision)
        if not isinstance(optimize, bool):
            raise ValueError(f"`optimize` must be True or False, got {optimize!r}")
        tta = self.default_tta if tta is None else tta
        sources = collect_inputs(inputs)
        parameter = next(model.parameters())
        device, own = parameter.device, parameter.dtype  # a bf16/fp16 model gets inputs of its own dtype
        runner: list[Any] = []  # [inference copy or None], made at the first batch (it checks itself on an image)
        was_training = model.training
        model.eval()

        def forward(batch: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(batch).to(device)
            if not runner:
                runner.append(_inference_forward(model, x[:1].float(), dtype, optimize))
            with torch.inference_mode():
                if runner[0] is not None:
                    return runner[0](x).cpu().numpy()
                return model(x.to(own)).float().cpu().numpy()

        try:
            logits, kept = compute_logits(
                forward, sources, model.preprocessor, batch_size, tta, skip_bad_images, progress
            )
        finally:
            model.train(was_training)
        return logits, [sources[i].source for i in kept]

    def predict(
        self,
        inputs: Any,
        top_k: int | None = None,
        batch_size: int = 32,
        tta: bool | str | None = None,
        threshold: float = 0.5,
        skip_bad_images: bool = False,
        progress: bool | None = None,
        precision: str | None = None,
        optimize: bool = True,
    ) -> list[Prediction]:
        """Predict class names and probabilities for images.

        Each image gets the model's stored evaluation preprocessing (resize,
        center crop, normalise); images run in batches in inference mode, and
        probabilities use the calibrated temperature.

        Args:
            inputs: A file path, a folder (recursive), a glob, a Pillow image, a
                numpy array (``(H, W)``, ``(H, W, C)``, or ``(N, H, W, C)``;
                uint8 or floats in ``[0, 1]``), a tensor (``(C, H, W)`` or
                ``(N, C, H, W)``), or a list of those.
            top_k: Classes per image, most probable first (1 to ``num_classes``;
                single-label models). ``None``: 5, or every class when there are fewer.
            batch_size: Images per forward pass.
            tta: Test-time augmentation: ``True`` or ``"flip"`` averages each
                image with its mirror; ``"crops"`` over five crops;
                ``"flip_crops"`` over ten views. ``None``: the model's
                [`default_tta`][autotimm.ImageClassifier.default_tta].
            threshold: Multi-label models return the labels whose probability
                is at least this (at most ``top_k``).
            skip_bad_images: Skip unreadable files with a warning instead of raising.
            progress: Show a progress bar (``None``: for more than a few batches).
            precision: ``None``: run in the model's own dtype; ``"fp32"``; ``"bf16"``:
                run a bfloat16 copy of the model (faster on CPUs with AVX512-BF16 or
                AMX and on GPUs; logits change by about 1%, see the prediction guide).
            optimize: On the CPU, run an inference copy of a float32 model with the
                batch norms folded into the convolutions and, for convolutional
                networks, channels-last memory format. The copy is checked against
                the model on the first image (logits within 1e-4 of the largest,
                relative) and kept with the model until its weights change; the
                model itself is not changed. ``False``: run the model as it is.

        Returns:
            One [`Prediction`][autotimm.prediction.predict.Prediction] per image, in input order.

        Raises:
            FileNotFoundError: A missing file or folder, or a glob matching nothing.
            ValueError: A bad argument, an empty folder or an unreadable image.
            TypeError: An input of an unsupported type.
            RuntimeError: The model has no head yet (made without ``num_classes``, not trained).
        """
        model: Any = self
        model.require_head()
        tta = self.default_tta if tta is None else tta
        top_k = check_predict_arguments(
            model.hparams.num_classes, top_k, batch_size, threshold, tta, model.hparams.multi_label
        )
        logits, sources = self.predict_logits(
            inputs, batch_size, tta, skip_bad_images, progress, precision=precision, optimize=optimize
        )
        scaled = logits / float(model.temperature)
        return decode(scaled, model.class_names, model.hparams.multi_label, top_k, threshold, sources)

    def calibrate(self, data: Any, split: str = "val", **kwargs: Any) -> Any:
        """Fit a temperature on held-out data, so that probabilities match accuracy.

        Stores it in the model's ``temperature`` (saved with `save` and every
        later checkpoint); predictions, evaluation and exports then use it.

        Args:
            data: An ``ImageDataModule`` (its ``split``), a class-folder folder,
                or ``(images, labels)`` arrays. Use data the model was not trained on.
            split: The data module's split.
            **kwargs: Passed to [`calibrate_model`][autotimm.evaluation.calibration.calibrate_model].

        Returns:
            A [`CalibrationResult`][autotimm.evaluation.calibration.CalibrationResult]:
            the temperature and the ECE and NLL before and after.
        """
        from autotimm.evaluation.calibration import calibrate_model

        return calibrate_model(self, data, split=split, **kwargs)

    def apply_data_info(
        self,
        class_names: Sequence[str],
        data_config: dict[str, Any] | None = None,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        multi_label: bool | None = None,
    ) -> None:
        """Take class names, preprocessing and loss weights from the data.

        Stored in the hyper-parameters, so checkpoints carry them and
        ``load_from_checkpoint`` restores them. ``AutoTrainer.fit`` calls this
        with the data module's values. A model made without ``num_classes``
        gets its head here, one output per class name.

        Args:
            class_names: One name per class, in label order.
            data_config: timm data config (input size, mean, std, ...).
            class_weights: Per-class loss weights, or ``None`` to keep the current ones.
            multi_label: Whether the data is multi-label, checked against the model's ``multi_label``.

        Raises:
            ValueError: If the number of classes differs from ``num_classes``, or
                the data is multi-label and the model is not (or the reverse).
        """
        if multi_label is not None and bool(multi_label) != self.hparams.multi_label:
            raise ValueError(
                f"the data is {'multi' if multi_label else 'single'}-label but the model was built with "
                f"multi_label={self.hparams.multi_label}; build it with multi_label={bool(multi_label)}"
            )
        if self.hparams.num_classes is None:
            self.set_num_classes(len(class_names))  # type: ignore[attr-defined]
        num_classes = self.hparams.num_classes
        if len(class_names) != num_classes:
            raise ValueError(
                f"the data has {len(class_names)} classes ({', '.join(map(str, class_names[:10]))}"
                f"{', ...' if len(class_names) > 10 else ''}) but the model was built with num_classes={num_classes}"
            )
        self.class_names = check_class_names(class_names, num_classes)
        self.hparams["class_names"] = self.class_names
        if data_config is not None:
            self.hparams["data_config"] = plain_data(dict(data_config))
        if class_weights is not None:
            weights = class_weights.tolist() if isinstance(class_weights, torch.Tensor) else class_weights
            self.hparams["class_weights"] = check_class_weights(weights, num_classes)
            self.criterion = self._make_criterion().to(self.device)

    @property
    def data_config(self) -> dict[str, Any] | None:
        """The preprocessing the model expects (timm data config), when known."""
        return self.hparams.data_config
