"""Using a trained classifier: its classes and preprocessing, load and save checkpoints, predict, calibrate.

[`ImageClassifier`][autotimm.ImageClassifier] inherits these methods from
`InferenceMixin`; the work is done by ``autotimm.prediction.predict`` (batching,
decoding) and ``autotimm.evaluation.calibration`` (temperature scaling).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from autotimm.classifier.arguments import check_class_names, check_class_weights, plain_data
from autotimm.data.transforms import backbone_in_chans, make_data_config
from autotimm.prediction.inputs import collect_inputs
from autotimm.prediction.predict import Prediction, check_predict_arguments, compute_logits, decode
from autotimm.prediction.preprocess import Preprocessor, check_tta
from autotimm.training.checkpointing import atomic_save

__all__ = ["InferenceMixin"]


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
    ) -> tuple[np.ndarray, list[str | None]]:
        """Raw logits (before the temperature) for images, in inference mode.

        Args:
            inputs: As for [`predict`][autotimm.ImageClassifier.predict].
            batch_size: Images per forward pass.
            tta: Test-time augmentation; logits are averaged over the views.
                ``None``: the model's [`default_tta`][autotimm.ImageClassifier.default_tta].
            skip_bad_images: Skip unreadable files with a warning instead of raising.
            progress: Show a progress bar (``None``: for more than a few batches).

        Returns:
            ``(logits, sources)``: float32 ``(N, num_classes)`` and each image's
            file path (``None`` for in-memory images), skipped images left out.
        """
        model: Any = self
        tta = self.default_tta if tta is None else tta
        sources = collect_inputs(inputs)
        parameter = next(model.parameters())
        device, dtype = parameter.device, parameter.dtype  # a bf16/fp16 model gets inputs of its own dtype
        was_training = model.training
        model.eval()

        def forward(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(batch).to(device, dtype)).float().cpu().numpy()

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
        logits, sources = self.predict_logits(inputs, batch_size, tta, skip_bad_images, progress)
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
