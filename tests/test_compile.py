"""``ImageClassifier(compile=...)``: argument checks, clean checkpoints, and the eager fallback.

Real compilation (inductor) takes tens of seconds on a CPU, so these tests run
torch.compile with ``backend="eager"`` (dynamo traces the model, no code is
generated): the same path through ``ImageClassifier``, in seconds.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import NUM_CLASSES, make_trainer

from autotimm import BackboneConfig, ImageClassifier
from autotimm.classifier.arguments import COMPILE_MODES

REAL_COMPILE = torch.compile


def _model(**kwargs) -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=NUM_CLASSES, **kwargs)


@pytest.fixture
def eager_backend(monkeypatch):
    """torch.compile with the eager backend; records the modes asked for."""
    modes: list[str | None] = []

    def compile_eager(function, *, mode=None, **kwargs):
        modes.append(mode)
        return REAL_COMPILE(function, backend="eager")

    monkeypatch.setattr(torch, "compile", compile_eager)
    torch._dynamo.reset()
    yield modes
    torch._dynamo.reset()


@pytest.mark.parametrize("value", ["fast", "max_autotune", 1, 0.5, ["default"]])
def test_compile_argument_is_checked(value):
    with pytest.raises(ValueError, match=r"`compile` must be one of False, True, 'default'") as info:
        _model(compile=value)
    assert repr(value) in str(info.value) and "'max-autotune'" in str(info.value)


def test_compile_modes_are_accepted_and_saved():
    for value in (False, True, *COMPILE_MODES):
        assert _model(compile=value).hparams.compile == value


def test_compiled_model_trains_predicts_and_saves_clean_keys(tmp_path, train_loader, eager_backend):
    model = _model(compile=True)
    make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0).fit(model, train_loader)
    assert eager_backend == ["default"]  # one compiled function, built at the first forward
    path = tmp_path / "model.ckpt"
    model.save(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert not [key for key in state if "_orig_mod" in key]
    eager = _model(compile=False)
    eager.load_state_dict(state)  # strict: the same keys as an eager model's
    x = torch.randn(3, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), eager.eval()(x))
    loaded = ImageClassifier.load(path)
    assert loaded.hparams.compile is True
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), eager(x))


def test_a_copy_compiles_its_own_function(eager_backend):
    model = _model(compile="reduce-overhead")
    x = torch.randn(2, 3, 32, 32)
    model.eval()(x)
    twin = copy.deepcopy(model)
    assert twin._compiled_forward is None and model._compiled_forward is not None
    with torch.no_grad():
        twin.head.fc.weight.zero_()
        twin.head.fc.bias.fill_(1.0)
    assert torch.equal(twin(x), torch.ones(2, NUM_CLASSES))  # its own weights, not the original's


@pytest.mark.parametrize("where", ["at torch.compile", "at the first call"])
def test_a_failed_compile_warns_once_and_runs_eagerly(monkeypatch, where):
    def failing_compile(function, **kwargs):
        if where == "at torch.compile":
            raise RuntimeError("no C++ compiler found")

        def compiled(*args, **kw):
            raise RuntimeError("no C++ compiler found")

        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    model, eager = _model(compile="max-autotune").eval(), _model().eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            outputs = [model(x) for _ in range(3)]
    messages = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
    assert len(messages) == 1
    assert "compile='max-autotune'" in messages[0] and "RuntimeError: no C++ compiler found" in messages[0]
    with torch.no_grad():
        for output in outputs:
            torch.testing.assert_close(output, eager(x))


def test_a_real_error_is_not_hidden_by_the_fallback(eager_backend):
    model = _model(compile=True)
    with pytest.raises(RuntimeError), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(torch.randn(2, 5, 32, 32))  # 5 channels: the first convolution refuses them, compiled or not
    assert not [w for w in caught if "torch.compile failed" in str(w.message)]
    assert model._compile_mode == "default"  # still compiled
