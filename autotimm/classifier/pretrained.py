"""The model folder for sharing: ``model.safetensors``, timm's ``config.json`` and a ``README.md`` model card.

[`save_pretrained`][autotimm.classifier.pretrained.save_pretrained] writes the
folder that the Hugging Face Hub and plain timm understand:

- ``model.safetensors``: the weights of the timm model itself (backbone and its
  own classifier layer, timm's key names), weights only, no pickle;
- ``config.json``: timm's pretrained-config form (``architecture``,
  ``num_classes``, ``label_names``, ``pretrained_cfg`` with input size, mean,
  std, interpolation and crop), written by timm's own ``save_for_hf``, plus an
  ``autotimm`` entry (hyper-parameters, class names, temperature, TTA, threshold);
- ``README.md``: a model card (task, classes, training data, metrics, how to load it).

So ``timm.create_model("local-dir:DIR", pretrained=True)`` (or ``"hf-hub:user/repo"``)
builds the same network with equal logits, and
[`load_pretrained`][autotimm.classifier.pretrained.load_pretrained] rebuilds the
[`ImageClassifier`][autotimm.ImageClassifier] exactly. Training checkpoints stay
Lightning ``.ckpt`` files (they carry the optimizer state for resuming); this
folder is the format for sharing.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autotimm.classifier.arguments import plain_data

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "HubUnavailableError",
    "check_repo_id",
    "is_pretrained_folder",
    "load_pretrained",
    "model_card",
    "paired_logits",
    "push_to_hub",
    "save_pretrained",
    "timm_model",
    "upload_folder",
]

#: timm's config file name in a model folder.
CONFIG_FILE = "config.json"
#: The weights file name in a model folder (timm and the Hub look for it first).
WEIGHTS_FILE = "model.safetensors"
#: The model card's file name.
CARD_FILE = "README.md"
#: The version of the ``autotimm`` entry of ``config.json``.
FORMAT_VERSION = 1
#: The files a model folder holds (and the Hub upload sends).
FOLDER_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
#: pretrained_cfg entries that describe timm's original weights, not these ones.
_SOURCE_FIELDS = ("tag", "hf_hub_id", "url", "file", "origin_url", "paper_ids", "paper_name", "notes")


class HubUnavailableError(OSError):
    """The Hugging Face Hub cannot be reached (offline, or no network): nothing was uploaded or downloaded."""


def is_pretrained_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a model folder: it holds ``config.json`` and ``model.safetensors``.

    Example:
        >>> is_pretrained_folder("no/such/folder")
        False
    """
    folder = Path(path)
    return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


# ---------------------------------------------------------------------------------------------------- timm model
def _head_layer(model: Any) -> nn.Linear:
    if not hasattr(model, "backbone"):
        raise TypeError(
            f"a model folder holds one ImageClassifier, got {type(model).__name__}: share an ensemble as the folder "
            "its save() writes, or as an ONNX export"
        )
    head = model.head
    if head is None:
        raise ValueError(
            "this ImageClassifier has no head yet (built without `num_classes`, not trained): train it first, "
            "or pass num_classes=..."
        )
    if not isinstance(getattr(head, "hidden", None), (nn.Identity, type(None))):
        raise ValueError(
            "this ImageClassifier's head has a hidden layer (ClassificationHead(hidden_features=...)), which timm's "
            "classifier cannot hold: the model folder needs a linear head; share the .ckpt or an ONNX export instead"
        )
    return head.fc


def timm_model(model: Any) -> nn.Module:
    """The plain timm model (``timm.create_model(name, num_classes=N)``) holding ``model``'s weights.

    The backbone's tensors keep their names; the head's linear layer becomes
    timm's own classifier (``fc``, ``head``, ``classifier``, ...). The result is
    checked to give the same logits as ``model`` on random images.

    Args:
        model: An [`ImageClassifier`][autotimm.ImageClassifier] with a head.

    Returns:
        The timm model, in eval mode, on the CPU.

    Raises:
        ValueError: The model has no head, a head with a hidden layer, or an
            architecture whose timm classifier is not one linear layer (e.g.
            distilled DeiT's two heads): the message says which.
    """
    import timm

    fc = _head_layer(model)
    hp = model.hparams
    backbone = hp.backbone
    kwargs = dict(backbone.get("extra_kwargs") or {})
    full = timm.create_model(
        backbone["model_name"], pretrained=False, num_classes=hp.num_classes, in_chans=backbone["in_chans"], **kwargs
    )
    state = {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}
    missing, unexpected = full.load_state_dict(state, strict=False)
    classifier = full.get_classifier()
    names = {
        f"{name}.{param}"
        for name, module in full.named_modules()
        if module is classifier
        for param in ("weight", "bias")
    }
    if unexpected or set(missing) - names or not isinstance(classifier, nn.Linear):
        raise ValueError(
            f"backbone {backbone['model_name']!r}: timm's model with {hp.num_classes} classes does not match the "
            f"headless backbone plus one linear layer (missing {sorted(set(missing) - names)}, unexpected "
            f"{sorted(unexpected)}, classifier {type(classifier).__name__}); share the .ckpt or an ONNX export instead"
        )
    classifier.load_state_dict({k: v.detach().cpu() for k, v in fc.state_dict().items()})
    full.eval()
    _check_same_logits(model, full)
    return full


def paired_logits(model: Any, other: nn.Module, samples: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of ``model`` and of ``other`` on the same random images of the model's input size.

    Both run in eval mode under ``inference_mode`` (``model`` is put back in
    its mode after); ``other`` runs on the CPU in float32.

    Args:
        model: An [`ImageClassifier`][autotimm.ImageClassifier].
        other: A module taking the same preprocessed images, e.g. the plain timm model of
            `timm_model` or one that timm loaded from the model folder.
        samples: Random images to compare on.
        seed: The seed of the images.

    Returns:
        ``(model's logits, other's logits)``, float32 on the CPU.
    """
    channels, height, width = _input_size(model)
    images = torch.rand(samples, channels, height, width, generator=torch.Generator().manual_seed(seed))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            parameter = next(model.parameters())
            ours = model(images.to(parameter.device, parameter.dtype)).float().cpu()
            theirs = other.eval()(images)
    finally:
        model.train(was_training)
    return ours, theirs


def _check_same_logits(model: Any, full: nn.Module) -> None:
    """Raise unless the timm model gives ``model``'s logits on two random images."""
    ours, theirs = paired_logits(model, full)
    difference = float((ours - theirs).abs().max())
    scale = float(ours.abs().max()) or 1.0
    if not difference <= 1e-4 * max(1.0, scale):
        raise ValueError(
            f"the timm model built from this ImageClassifier gives other logits (max |difference| {difference:.3g}); "
            "share the .ckpt or an ONNX export instead"
        )


def _input_size(model: Any) -> tuple[int, int, int]:
    config = model.preprocessor.data_config
    channels, height, width = (int(v) for v in config["input_size"])
    return channels, height, width


# ------------------------------------------------------------------------------------------------------ save
def _metadata(model: Any, threshold: float) -> dict[str, Any]:
    from autotimm._version import __version__

    hparams = plain_data(dict(model.hparams))
    return {
        "format_version": FORMAT_VERSION,
        "autotimm_version": __version__,
        "class_names": list(model.class_names),
        "multi_label": bool(model.hparams.multi_label),
        "temperature": float(model.temperature),
        "tta": model.default_tta,
        "threshold": float(threshold),
        "data_config": plain_data(dict(model.preprocessor.data_config)),
        "hparams": json.loads(json.dumps(hparams, default=str)),
    }


def _tidy_config(path: Path, license: str) -> None:
    """Drop what describes timm's original weights (tag, paper, URL) and set this model's license."""
    config = json.loads(path.read_text(encoding="utf-8"))
    pretrained_cfg = config.get("pretrained_cfg", {})
    for key in _SOURCE_FIELDS:
        pretrained_cfg.pop(key, None)
    pretrained_cfg["license"] = license
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _metric_numbers(metrics: Mapping[str, Any] | str | os.PathLike[str] | None) -> dict[str, float]:
    """The numbers to print in the card: from a dict, or the top-level numbers of an evaluation's ``metrics.json``."""
    if metrics is None:
        return {}
    if isinstance(metrics, (str, os.PathLike)):
        path = Path(metrics)
        if path.is_dir():
            path = path / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"`metrics` {os.fspath(metrics)!r}: no such metrics.json file")
        metrics = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(metrics, Mapping):
        raise ValueError(f"`metrics` must be a dict of numbers or a metrics.json path, got {type(metrics).__name__}")
    numbers = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            numbers[str(key)] = float(value)
    return numbers


def model_card(
    model: Any,
    license: str = "apache-2.0",
    metrics: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    training_data: str | None = None,
    repo_id: str | None = None,
) -> str:
    """The ``README.md`` model card of a model folder: Hub metadata, task, classes, data, metrics, how to load it.

    Args:
        model: The [`ImageClassifier`][autotimm.ImageClassifier].
        license: An SPDX-style license id for the card and ``config.json`` (the Hub's ``license`` field).
        metrics: Numbers to report (e.g. ``EvaluationReport.summary``), or an evaluation's ``metrics.json``
            (or its folder); ``None`` for none.
        training_data: A line on the training data (``"mnist5k: 4,000 training images"``); ``None`` leaves it out.
        repo_id: The Hub repository, for the loading examples; ``None``: ``user/model``.

    Returns:
        The card's Markdown text, starting with its YAML metadata.
    """
    from huggingface_hub import ModelCardData

    hp = model.hparams
    numbers = _metric_numbers(metrics)
    card_data = ModelCardData(
        license=license,
        library_name="timm",
        pipeline_tag="image-classification",
        tags=["image-classification", "timm", "autotimm", *(["multi-label"] if hp.multi_label else [])],
    )
    name = hp.backbone["model_name"]
    channels, height, width = _input_size(model)
    classes = list(model.class_names)
    shown = ", ".join(f"`{c}`" for c in classes[:50]) + (f", … ({len(classes)} in all)" if len(classes) > 50 else "")
    repo = repo_id or "user/model"
    task = "Multi-label image classification" if hp.multi_label else "Image classification"
    lines = [
        "---",
        card_data.to_yaml(),
        "---",
        "",
        f"# {name} image classifier",
        "",
        f"{task} with a timm `{name}` backbone, trained with [autotimm](https://github.com/autotimm/autotimm).",
        "",
        "## Model",
        "",
        f"- Task: {task.lower()}, {len(classes)} classes",
        f"- Architecture: `{name}` (timm), input {channels}×{height}×{width}",
        f"- Calibration temperature: {float(model.temperature):.4g}; test-time augmentation: {model.default_tta}",
        f"- Classes: {shown}",
    ]
    if training_data:
        lines += ["", "## Training data", "", training_data]
    if numbers:
        lines += ["", "## Metrics", "", "| Metric | Value |", "|---|---|"]
        lines += [f"| {key} | {value:.4f} |" for key, value in numbers.items()]
    lines += [
        "",
        "## How to use it",
        "",
        "With autotimm (class names, preprocessing, temperature and TTA included):",
        "",
        "```python",
        "from autotimm import ImageClassifier",
        "",
        f'model = ImageClassifier.from_pretrained("{repo}")  # or a local folder',
        'model.predict("photo.jpg", top_k=3)',
        "```",
        "",
        "With plain timm (the same network and logits):",
        "",
        "```python",
        "import timm",
        "",
        f'model = timm.create_model("hf-hub:{repo}", pretrained=True).eval()  # or "local-dir:FOLDER"',
        "config = timm.data.resolve_data_config({}, model=model)",
        "transform = timm.data.create_transform(**config)",
        "labels = model.pretrained_cfg['label_names']",
        "```",
        "",
        "## License",
        "",
        f"{license}",
        "",
    ]
    return "\n".join(lines)


def save_pretrained(
    model: Any,
    directory: str | os.PathLike[str],
    license: str = "apache-2.0",
    metrics: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    training_data: str | None = None,
    threshold: float = 0.5,
    repo_id: str | None = None,
) -> Path:
    """Write the model folder: ``model.safetensors``, ``config.json`` (timm's form) and a ``README.md`` model card.

    The folder is written next to ``directory`` first and moved into place,
    so a failure leaves no half-written folder; files of an existing folder
    other than these three are kept.

    Args:
        model: An [`ImageClassifier`][autotimm.ImageClassifier] with a plain linear head.
        directory: The folder to write (created).
        license: The license id written to the card and ``config.json``.
        metrics: Numbers for the card, or an evaluation's ``metrics.json`` (or its folder).
        training_data: A line on the training data, for the card.
        threshold: Multi-label models: the probability from which a label is predicted (stored, for the card
            and the loaders).
        repo_id: The Hub repository the folder is for, used in the card's examples.

    Returns:
        The folder.

    Raises:
        ValueError: A model without a head, or one timm cannot represent (see
            [`timm_model`][autotimm.classifier.pretrained.timm_model]); a bad ``threshold``.
    """
    from timm.models import save_for_hf

    from autotimm.checks import require_number

    require_number("threshold", threshold, 0, 1, hint="a probability")
    full = timm_model(model)
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        save_for_hf(
            full,
            str(staging),
            model_config={"label_names": list(model.class_names), "autotimm": _metadata(model, threshold)},
            safe_serialization=True,
            data_config=plain_data(dict(model.preprocessor.data_config)),
        )
        _tidy_config(staging / CONFIG_FILE, license)
        (staging / CARD_FILE).write_text(model_card(model, license, metrics, training_data, repo_id), encoding="utf-8")
        target.mkdir(exist_ok=True)
        for name in FOLDER_FILES:
            os.replace(staging / name, target / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# ------------------------------------------------------------------------------------------------------ load
def _hparams_from_timm(config: dict[str, Any]) -> dict[str, Any]:
    """ImageClassifier arguments for a plain timm folder (no ``autotimm`` entry): architecture, classes, input."""
    pretrained_cfg = config.get("pretrained_cfg", {})
    model_args = dict(config.get("model_args") or {})
    num_classes = int(config.get("num_classes") or pretrained_cfg.get("num_classes"))
    in_chans = int(model_args.pop("in_chans", (pretrained_cfg.get("input_size") or [3])[0]))
    model_args.pop("num_classes", None)
    names = config.get("label_names") or pretrained_cfg.get("label_names")
    if isinstance(names, dict):
        names = [names[str(i)] if str(i) in names else names.get(i, str(i)) for i in range(num_classes)]
    data_config = {
        key: pretrained_cfg[key]
        for key in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
        if key in pretrained_cfg
    }
    return {
        "backbone": {
            "model_name": config["architecture"],
            "pretrained": False,
            "in_chans": in_chans,
            "extra_kwargs": model_args,
        },
        "num_classes": num_classes,
        "class_names": None if names is None or len(names) != num_classes else [str(n) for n in names],
        "data_config": data_config or None,
    }


def _restore_types(hparams: dict[str, Any]) -> dict[str, Any]:
    """Undo what JSON changed: ``unfreeze_schedule``'s integer keys became strings."""
    schedule = hparams.get("unfreeze_schedule")
    if isinstance(schedule, dict):
        hparams["unfreeze_schedule"] = {int(k): v for k, v in schedule.items()}
    return hparams


def _local_folder(dir_or_hub_id: str | os.PathLike[str], revision: str | None, token: str | None) -> Path:
    """The model folder: a local one as it is, or a Hub repository's files downloaded (``hf-hub:`` optional)."""
    text = os.fspath(dir_or_hub_id)
    path = Path(text).expanduser()
    if path.is_dir():
        if not is_pretrained_folder(path):
            raise FileNotFoundError(
                f"`dir_or_hub_id` {text!r} is a folder without {CONFIG_FILE} and {WEIGHTS_FILE}; "
                "it must be a folder written by save_pretrained (or a timm Hub folder)"
            )
        return path
    repo_id = text.removeprefix("hf-hub:")
    try:
        check_repo_id(repo_id)
    except ValueError:
        raise FileNotFoundError(
            f"`dir_or_hub_id` {text!r} is neither a folder nor a Hugging Face Hub repository id (user/name)"
        ) from None
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, revision=revision, token=token, allow_patterns=list(FOLDER_FILES))
    except Exception as err:
        raise _hub_error("download", repo_id, err) from err
    return Path(folder)


def load_pretrained(
    cls: type,
    dir_or_hub_id: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    revision: str | None = None,
    token: str | None = None,
) -> Any:
    """Load a model folder (local or on the Hub) back into an [`ImageClassifier`][autotimm.ImageClassifier].

    A folder written by [`save_pretrained`][autotimm.classifier.pretrained.save_pretrained]
    comes back exactly (hyper-parameters, class names, preprocessing,
    temperature, TTA: equal predictions); a plain timm folder (e.g.
    ``timm/resnet18.a1_in1k`` on the Hub) gets a classifier with its own
    classes and preprocessing.

    Args:
        cls: The classifier class (``ImageClassifier``).
        dir_or_hub_id: A folder, or a Hub repository id (``user/name``, ``hf-hub:user/name``).
        map_location: Where the weights go.
        revision: The Hub revision (branch, tag or commit).
        token: A Hub token for private repositories; ``None`` for the stored login.

    Returns:
        The classifier, in eval mode.

    Raises:
        FileNotFoundError: No such folder, or a folder without the files.
        HubUnavailableError: A Hub id while the Hub cannot be reached.
        ValueError: Weights that do not fit the configuration.
    """
    from safetensors.torch import load_file

    folder = _local_folder(dir_or_hub_id, revision, token)
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    meta = config.get("autotimm")
    hparams = _restore_types(dict(meta["hparams"])) if isinstance(meta, dict) else _hparams_from_timm(config)
    model = cls(**hparams)
    state = load_file(str(folder / WEIGHTS_FILE), device="cpu")
    classifier = _classifier_keys(model, state)
    backbone_state = {k: v for k, v in state.items() if k not in classifier.values()}
    try:
        model.backbone.load_state_dict(backbone_state, strict=True)
        model.head.fc.load_state_dict({param: state[key] for param, key in classifier.items()}, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{os.fspath(dir_or_hub_id)!r}: the weights do not fit its {CONFIG_FILE}: {err}") from err
    if isinstance(meta, dict):
        model.temperature.fill_(float(meta.get("temperature", 1.0)))
    return model.to(map_location).eval()


def _classifier_keys(model: Any, state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``{"weight": key, "bias": key}``: the tensors of timm's classifier (those not in the headless backbone)."""
    backbone_keys = set(model.backbone.state_dict())
    extra = [k for k in state if k not in backbone_keys]
    found = {k.rsplit(".", 1)[-1]: k for k in extra}
    if set(found) != {"weight", "bias"} or len(extra) != 2:
        raise ValueError(
            f"the weights' classifier tensors are {sorted(extra)}; expected one linear layer's weight and bias"
        )
    return found


# ------------------------------------------------------------------------------------------------------- hub
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_repo_id(repo_id: Any) -> str:
    """Return ``repo_id`` if it is a valid Hugging Face Hub model id (``name`` or ``user/name``).

    Checked with ``huggingface_hub``'s own validator, before anything is uploaded.

    Raises:
        ValueError: Naming the value and the accepted form.

    Example:
        >>> check_repo_id("me/pets-resnet18")
        'me/pets-resnet18'
        >>> check_repo_id("me/pets/resnet18")
        Traceback (most recent call last):
        ...
        ValueError: `repo_id` must be a Hugging Face Hub id 'name' or 'user/name' ...
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    accepted = (
        "a Hugging Face Hub id 'name' or 'user/name' (letters, digits, '-', '_', '.'; no '--' or '..'; "
        "at most 96 characters)"
    )
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id):
        raise ValueError(f"`repo_id` must be {accepted}; got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"`repo_id` must be {accepted}; got {repo_id!r} ({err})") from None
    return repo_id


def _hub_error(action: str, repo_id: str, err: BaseException) -> Exception:
    """A one-line error for a Hub call that failed; network failures become `HubUnavailableError`."""
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403):
        return PermissionError(
            f"Hugging Face Hub: cannot {action} {repo_id!r}: not authorised (HTTP {status}); log in with "
            "`hf auth login` or pass token=... ({reason})"
        )
    if status is not None:
        return OSError(f"Hugging Face Hub: cannot {action} {repo_id!r}: HTTP {status}: {reason}")
    return HubUnavailableError(
        f"Hugging Face Hub unreachable: cannot {action} {repo_id!r} ({type(err).__name__}: {reason}); "
        "check the network (and HF_ENDPOINT), or save the folder with save_pretrained and upload it later"
    )


def push_to_hub(
    model: Any,
    repo_id: str,
    private: bool = True,
    token: str | None = None,
    commit_message: str = "Upload autotimm model",
    endpoint: str | None = None,
    **save_kwargs: Any,
) -> str:
    """Write the model folder and upload it to a Hugging Face Hub model repository (created if missing).

    The folder is written first (so a model timm cannot represent fails before
    any upload), then [`upload_folder`][autotimm.classifier.pretrained.upload_folder]
    creates the repository (``exist_ok=True``) and uploads ``model.safetensors``,
    ``config.json`` and ``README.md``. With ``HF_HUB_OFFLINE=1`` it fails at once.

    Args:
        model: The [`ImageClassifier`][autotimm.ImageClassifier].
        repo_id: ``name`` or ``user/name``.
        private: Create the repository private.
        token: A Hub token with write access; ``None`` for the stored login (``hf auth login``) or ``HF_TOKEN``.
        commit_message: The upload's commit message.
        endpoint: The Hub's URL; ``None`` for ``HF_ENDPOINT`` or huggingface.co.
        **save_kwargs: Passed to [`save_pretrained`][autotimm.classifier.pretrained.save_pretrained]
            (``license``, ``metrics``, ``training_data``, ``threshold``).

    Returns:
        The repository's URL.

    Raises:
        ValueError: A bad ``repo_id``, or a model the folder cannot hold.
        HubUnavailableError: Offline (``HF_HUB_OFFLINE=1``) or the Hub cannot be reached.
        PermissionError: The Hub refused the token.
    """
    check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="autotimm-hub-") as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", repo_id=repo_id, **save_kwargs)
        return upload_folder(folder, repo_id, private, token, commit_message, endpoint)


def upload_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    private: bool = True,
    token: str | None = None,
    commit_message: str = "Upload autotimm model",
    endpoint: str | None = None,
) -> str:
    """Upload a model folder written by `save_pretrained` to a Hub model repository (created if missing).

    Only ``model.safetensors``, ``config.json`` and ``README.md`` are sent.

    Args:
        folder: The model folder.
        repo_id: ``name`` or ``user/name``.
        private: Create the repository private.
        token: A Hub token with write access; ``None`` for the stored login or ``HF_TOKEN``.
        commit_message: The upload's commit message.
        endpoint: The Hub's URL; ``None`` for ``HF_ENDPOINT`` or huggingface.co.

    Returns:
        The repository's URL.

    Raises:
        FileNotFoundError: ``folder`` is not a model folder.
        ValueError: A bad ``repo_id`` or ``private``.
        HubUnavailableError: Offline (``HF_HUB_OFFLINE=1``, at once) or the Hub cannot be reached.
        PermissionError: The Hub refused the token.
    """
    import huggingface_hub

    check_repo_id(repo_id)
    if not isinstance(private, bool):
        raise ValueError(f"`private` must be True or False, got {private!r}")
    if not is_pretrained_folder(folder):
        raise FileNotFoundError(
            f"`folder` {os.fspath(folder)!r} is not a model folder ({CONFIG_FILE} and {WEIGHTS_FILE}); "
            "write one with save_pretrained"
        )
    if huggingface_hub.constants.is_offline_mode():
        raise HubUnavailableError(
            f"Hugging Face Hub offline (HF_HUB_OFFLINE is set): {repo_id!r} was not uploaded; unset "
            "HF_HUB_OFFLINE, or keep the folder (save_pretrained) and upload it later"
        )
    api = huggingface_hub.HfApi(endpoint=endpoint, token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=repo_id,
            folder_path=os.fspath(folder),
            commit_message=commit_message,
            repo_type="model",
            allow_patterns=list(FOLDER_FILES),
        )
    except Exception as err:
        raise _hub_error("upload to", repo_id, err) from err
    return str(url)
