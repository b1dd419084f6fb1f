"""ONNX and TorchScript export: parity with PyTorch, metadata, dynamic batch, atomic writes, quantization, errors."""

from __future__ import annotations

import json
import sys
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from autotimm import BackboneConfig, ImageClassifier
from autotimm.data import make_data_config
from autotimm.exporting.exporter import ExportParityError, ExportResult, export, read_metadata
from autotimm.exporting.quantization import QuantizationReport
from autotimm.prediction.onnx_predictor import OnnxPredictor

CLASSES = ["cat", "dog", "fox"]


def _model(name: str, size: int | None, temperature: float = 1.0, **kwargs) -> ImageClassifier:
    torch.manual_seed(0)
    model = ImageClassifier(BackboneConfig(name, pretrained=False), num_classes=len(CLASSES), **kwargs)
    if size is not None:
        model.apply_data_info(CLASSES, make_data_config(model.backbone, 3, size))
    model.temperature.fill_(temperature)
    return model


def _expected(model: ImageClassifier, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return (model.eval()(torch.from_numpy(batch)) / model.temperature).numpy()


@pytest.fixture(scope="module")
def resnet():
    return _model("resnet18", 32, temperature=1.5, class_names=CLASSES)


@pytest.fixture(scope="module")
def resnet_onnx(resnet, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "nested" / "dir" / "model.onnx"
    resnet.train()  # the export runs in eval mode and gives the model back as it was
    result = export(resnet, path)
    return resnet, result


@pytest.fixture(scope="module")
def vit():
    return _model("test_vit", None)  # no data config: the backbone's own (160 px)


def test_onnx_export_parity_metadata_and_dynamic_batch(resnet_onnx):
    model, result = resnet_onnx
    assert model.training  # restored
    assert isinstance(result, ExportResult)
    assert result.path.is_file() and result.path.parent.name == "dir"  # parent folders created
    assert [p.name for p in result.path.parent.iterdir()] == ["model.onnx"]  # no temporary file left
    assert result.format == "onnx" and result.opset == 18 and result.exporter == "legacy"
    assert 0 <= result.max_abs_diff <= 1e-4 and result.atol == 1e-4
    assert result.file_size == result.path.stat().st_size

    proto = onnx.load(str(result.path))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["class_names"]) == CLASSES
    assert json.loads(props["input_size"]) == [3, 32, 32]
    assert json.loads(props["mean"]) == pytest.approx([0.485, 0.456, 0.406])
    assert props["interpolation"] == "bicubic" and props["crop_mode"] == "center"
    assert json.loads(props["multi_label"]) is False and float(props["temperature"]) == 1.5
    assert float(props["crop_pct"]) == model.data_config["crop_pct"]
    assert props["autotimm_version"]
    metadata = read_metadata(result.path)
    assert metadata == json.loads(props["autotimm"]) == result.metadata
    assert metadata["data_config"] == model.data_config and metadata["backbone"] == "resnet18"

    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("images", "logits")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 32, 32]
    for batch in (1, 5):  # 5: a batch size the parity check did not use
        x = np.random.default_rng(batch).normal(size=(batch, 3, 32, 32)).astype(np.float32)
        logits = session.run(None, {"images": x})[0]
        np.testing.assert_allclose(logits, _expected(model, x), atol=1e-4)  # calibrated: divided by 1.5
    text = str(result)
    assert "model.onnx" in text and "parity" in text and "opset 18" in text and "cat, dog, fox" in text


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_with_backbone_data_config(vit, tmp_path):
    result = export(vit, tmp_path / "vit.pt", format="torchscript", check_samples=3)
    assert result.format == "torchscript" and result.opset is None and result.max_abs_diff <= 1e-4
    metadata = read_metadata(result.path)
    assert metadata["data_config"]["input_size"] == [3, 160, 160]  # from the backbone: the model had none
    assert metadata["class_names"] == ["0", "1", "2"] and metadata == result.metadata
    extra = {"autotimm.json": ""}
    loaded = torch.jit.load(str(result.path), _extra_files=extra)
    assert json.loads(extra["autotimm.json"]) == metadata
    x = np.random.default_rng(0).normal(size=(4, 3, 160, 160)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(torch.from_numpy(x)).numpy(), _expected(vit, x), atol=1e-4)
    assert "torch.jit.trace" in str(result)


def test_auto_falls_back_to_dynamo(vit, tmp_path, monkeypatch):
    import autotimm.exporting.exporter as exporting

    real = exporting._onnx_proto

    def legacy_broken(wrapper, example, opset, exporter):
        if exporter == "legacy":
            raise RuntimeError("legacy exporter removed")
        return real(wrapper, example, opset, exporter)

    monkeypatch.setattr(exporting, "_onnx_proto", legacy_broken)
    result = export(vit, tmp_path / "vit.onnx", check_samples=2)  # onnx_exporter="auto"
    assert result.exporter == "dynamo" and result.opset == 18 and result.max_abs_diff <= 1e-4
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(5, 3, 160, 160)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"images": x})[0], _expected(vit, x), atol=1e-4)
    assert read_metadata(result.path)["backbone"] == "test_vit"
    assert [p.name for p in tmp_path.iterdir()] == ["vit.onnx"]
    with pytest.raises(RuntimeError, match="legacy exporter removed"):
        export(vit, tmp_path / "legacy.onnx", onnx_exporter="legacy")


def test_parity_failure_raises_and_writes_nothing(resnet, tmp_path, monkeypatch):
    import autotimm.exporting.exporter as exporting

    real = exporting._onnx_runner

    def perturbed(path):
        run = real(path)
        return lambda batch: run(batch) + 0.01

    monkeypatch.setattr(exporting, "_onnx_runner", perturbed)
    with pytest.raises(ExportParityError, match=r"differ .* by up to 0\.01") as info:
        export(resnet, tmp_path / "new.onnx", onnx_exporter="legacy")
    assert isinstance(info.value, RuntimeError)
    assert info.value.max_abs_diff == pytest.approx(0.01, rel=1e-3) and info.value.atol == 1e-4
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one

    old = tmp_path / "old.onnx"
    old.write_bytes(b"previous export")
    with pytest.raises(ExportParityError):
        export(resnet, old, onnx_exporter="legacy", atol=0.001)
    assert old.read_bytes() == b"previous export"  # a failed export leaves the old file alone
    assert [p.name for p in tmp_path.iterdir()] == ["old.onnx"]


def test_torchscript_parity_failure(vit, tmp_path, monkeypatch):
    import autotimm.exporting.exporter as exporting

    monkeypatch.setattr(exporting, "_torchscript_runner", lambda path: lambda batch: np.zeros((len(batch), 2)))
    with pytest.raises(ExportParityError, match="inf means a wrong output shape"):
        export(vit, tmp_path / "vit.pt", format="torchscript", check_samples=2)
    assert list(tmp_path.iterdir()) == []


def test_quantize_with_export_at_opset_17(vit, tmp_path):
    result = export(vit, tmp_path / "vit.onnx", opset=17, quantize=True, check_samples=2)
    assert result.opset == 17 and result.exporter == "legacy"
    report = result.quantization
    assert isinstance(report, QuantizationReport)
    assert report.path == tmp_path / "vit.int8.onnx" and report.path.is_file()
    assert report.int8_size == report.path.stat().st_size < report.fp32_size == result.file_size
    assert report.size_ratio > 1.5 and report.num_images == 32
    assert 0.0 <= report.top1_agreement <= 1.0 and 0.0 <= report.max_prob_diff < 0.5
    assert report.fp32_accuracy is None and report.fp32_ms_per_image > 0
    ops = {node.op_type for node in onnx.load(str(report.path)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear"}  # really quantized
    metadata = read_metadata(report.path)
    assert metadata["quantization"].startswith("dynamic int8")
    assert {k: v for k, v in metadata.items() if k != "quantization"} == result.metadata
    assert OnnxPredictor(report.path).class_names == ["0", "1", "2"]
    assert "int8" in str(result) and "agreement" in str(result)


def test_argument_errors(resnet, tmp_path):
    with pytest.raises(ValueError, match=r"`format` must be one of \['onnx', 'torchscript'\], got 'tflite'"):
        export(resnet, tmp_path / "m.tflite", format="tflite")
    with pytest.raises(TypeError, match="`model` must be an autotimm ImageClassifier, got Linear"):
        export(nn.Linear(2, 2), tmp_path / "m.onnx")
    for kwargs, match in [
        ({"opset": 16}, "`opset` must be an int >= 17"),
        ({"atol": -1.0}, "`atol` must be a number >= 0"),
        ({"check_samples": 1}, "`check_samples` must be an int >= 2"),
        ({"onnx_exporter": "fast"}, "`onnx_exporter` must be one of"),
        ({"onnx_exporter": "dynamo", "opset": 17}, "use onnx_exporter='legacy'"),
        ({"format": "torchscript", "quantize": True}, "`quantize=True` needs format='onnx'"),
    ]:
        with pytest.raises(ValueError, match=match):
            export(resnet, tmp_path / "m.onnx", **kwargs)
    with pytest.raises(ValueError, match="must be a file path, got the folder"):
        export(resnet, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_missing_onnx_packages(resnet, tmp_path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(ImportError, match=r'pip install "autotimm\[onnx\]"'):
        export(resnet, tmp_path / "m.onnx")


def test_read_metadata_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_metadata(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 not a model")
    with pytest.raises(ValueError, match="neither an ONNX model nor a TorchScript file"):
        read_metadata(junk)
    plain = tmp_path / "plain.onnx"
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), str(plain))
    with pytest.raises(ValueError, match=r"no autotimm metadata .* autotimm\.export"):
        read_metadata(plain)
    archive = tmp_path / "other.pt"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("other/data.pkl", b"")
    with pytest.raises(ValueError, match=r"TorchScript .* without autotimm metadata"):
        read_metadata(archive)
