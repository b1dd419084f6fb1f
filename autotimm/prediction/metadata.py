"""The metadata an export carries (class names, preprocessing, temperature), and reading it back without torch."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "INPUT_NAME",
    "METADATA_KEY",
    "ONNX_INSTALL_HINT",
    "OUTPUT_NAME",
    "TORCHSCRIPT_METADATA_FILE",
    "import_onnxruntime",
    "metadata_from_props",
    "metadata_props",
    "read_metadata",
    "set_onnx_metadata",
]

#: Name of the exported graph's input: a float32 ``(batch, C, H, W)`` preprocessed batch.
INPUT_NAME = "images"
#: Name of the exported graph's output: ``(batch, num_classes)`` logits already divided by the temperature.
OUTPUT_NAME = "logits"
#: The ONNX ``metadata_props`` key holding all of autotimm's metadata as one JSON object.
METADATA_KEY = "autotimm"
#: The TorchScript extra file holding the same JSON object.
TORCHSCRIPT_METADATA_FILE = "autotimm.json"
#: What to install for ONNX export and the ONNX predictor.
ONNX_INSTALL_HINT = 'pip install "autotimm[onnx]"'

_REQUIRED_KEYS = ("class_names", "multi_label", "temperature", "data_config")


def import_onnxruntime() -> Any:
    """Import onnxruntime, or raise an ImportError that says what to install.

    Raises:
        ImportError: onnxruntime is not installed.
    """
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(
            f"onnxruntime is needed to run ONNX models: {ONNX_INSTALL_HINT} (or just `pip install onnxruntime`)"
        ) from err
    return onnxruntime


def metadata_from_props(props: Mapping[str, str], where: str = "the model") -> dict[str, Any]:
    """Parse autotimm's metadata from an ONNX model's ``metadata_props`` (key -> string).

    Args:
        props: The model's custom metadata.
        where: How to name the model in error messages (e.g. its path).

    Returns:
        The metadata: ``class_names``, ``multi_label``, ``temperature``, ``data_config`` and more.

    Raises:
        ValueError: The model has no autotimm metadata, or it is incomplete.
    """
    if METADATA_KEY not in props:
        raise ValueError(
            f"{where} has no autotimm metadata (no {METADATA_KEY!r} entry in its metadata_props); "
            "export the model with autotimm.export(model, path) to get class names, preprocessing and temperature"
        )
    return _check_metadata(props[METADATA_KEY], where)


def _check_metadata(text: str, where: str) -> dict[str, Any]:
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} has malformed autotimm metadata (not JSON: {err})") from err
    missing = [key for key in _REQUIRED_KEYS if not isinstance(metadata, dict) or key not in metadata]
    if missing:
        raise ValueError(f"{where} has incomplete autotimm metadata: missing {missing}")
    return metadata


def _torchscript_metadata(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith(f"/extra/{TORCHSCRIPT_METADATA_FILE}")]
        if not names:
            raise ValueError(
                f"{str(path)!r} is a TorchScript (zip) file without autotimm metadata (no extra file "
                f"{TORCHSCRIPT_METADATA_FILE!r}); export it with autotimm.export(model, path, format='torchscript')"
            )
        return _check_metadata(archive.read(names[0]).decode("utf-8"), repr(str(path)))


def _onnx_props(path: Path) -> dict[str, str]:
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as err:  # protobuf raises its own DecodeError
            raise ValueError(f"{str(path)!r} is neither an ONNX model nor a TorchScript file ({err})") from err
        return {prop.key: prop.value for prop in model.metadata_props}
    ort = import_onnxruntime()
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph errors
        raise ValueError(f"{str(path)!r} is neither an ONNX model nor a TorchScript file ({err})") from err
    return dict(session.get_modelmeta().custom_metadata_map)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the metadata [`export`][autotimm.exporting.exporter.export] stored in an ONNX or TorchScript file.

    Needs no torch: TorchScript files are zip archives, and ONNX files are read
    with ``onnx`` (or onnxruntime when ``onnx`` is not installed).

    Args:
        path: An exported ``.onnx`` or TorchScript file.

    Returns:
        ``class_names``, ``num_classes``, ``multi_label``, ``temperature``,
        ``data_config`` (input size, mean, std, interpolation, crop), ``backbone``,
        ``input_name``, ``output_name``, ``autotimm_version`` and, for quantized
        files, ``quantization``.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not an ONNX or TorchScript file, or one without autotimm metadata.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"Exported model not found: {os.fspath(path)!r}")
    if zipfile.is_zipfile(file):
        return _torchscript_metadata(file)
    return metadata_from_props(_onnx_props(file), repr(str(file)))


def metadata_props(metadata: dict[str, Any]) -> dict[str, str]:
    """The ONNX ``metadata_props`` for ``metadata``: one JSON entry plus readable single keys.

    Args:
        metadata: As built at export.

    Returns:
        ``{"autotimm": <all of it as JSON>, "class_names": <JSON list>, "input_size", "mean", "std",
        "interpolation", "crop_pct", "crop_mode", "multi_label", "temperature", "autotimm_version"}``.
    """
    config = metadata["data_config"]
    props = {METADATA_KEY: json.dumps(metadata), "class_names": json.dumps(metadata["class_names"])}
    for key in ("input_size", "mean", "std", "crop_pct"):
        props[key] = json.dumps(config.get(key))
    props["interpolation"] = str(config.get("interpolation"))
    props["crop_mode"] = str(config.get("crop_mode"))
    props["multi_label"] = json.dumps(metadata["multi_label"])
    props["temperature"] = repr(metadata["temperature"])
    props["autotimm_version"] = str(metadata["autotimm_version"])
    if "quantization" in metadata:
        props["quantization"] = str(metadata["quantization"])
    return props


def set_onnx_metadata(model_proto: Any, metadata: dict[str, Any]) -> None:
    """Replace autotimm's entries in an ``onnx.ModelProto``'s ``metadata_props`` (others are kept)."""
    props = metadata_props(metadata)
    kept = [(p.key, p.value) for p in model_proto.metadata_props if p.key not in props]
    del model_proto.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
