"""ImageClassifier.load / save / predict: every input kind, top-k, batching, bad inputs, TTA, preprocessing parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from autotimm import BackboneConfig, ImageClassifier
from autotimm.data import build_eval_transform, make_data_config
from autotimm.prediction.inputs import ImageSource, collect_inputs
from autotimm.prediction.predict import decode
from autotimm.prediction.preprocess import Preprocessor

SIZE = 32
CLASSES = ["cat", "dog", "fox", "owl"]
DATA_CONFIG = {
    "input_size": [1, SIZE, SIZE],
    "mean": [0.5],
    "std": [0.25],
    "interpolation": "bilinear",
    "crop_pct": 1.0,
    "crop_mode": "center",
}


def _blur(x: np.ndarray, passes: int = 3) -> np.ndarray:
    for _ in range(passes):
        x = (x + np.roll(x, 1, 0) + np.roll(x, -1, 0) + np.roll(x, 1, 1) + np.roll(x, -1, 1)) / 5
    return x


def _templates() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for _ in CLASSES:
        t = _blur(rng.normal(size=(SIZE, SIZE)))
        out.append((t - t.mean()) / t.std())
    return out


def make_images(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grayscale images whose class is a fixed left-right asymmetric pattern plus noise: (N, H, W, 1) uint8."""
    rng = np.random.default_rng(seed)
    templates = _templates()
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    images = np.stack([templates[c] + 0.5 * rng.normal(size=(SIZE, SIZE)) for c in labels])
    return np.clip(128 + 40 * images, 0, 255).astype(np.uint8)[..., None], labels


@pytest.fixture(scope="module")
def trained() -> ImageClassifier:
    """A small classifier trained (unflipped images only) on the pattern task."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = ImageClassifier(
        BackboneConfig("resnet18", pretrained=False, in_chans=1),
        num_classes=len(CLASSES),
        lr=3e-3,
        scheduler=None,
        class_names=CLASSES,
        data_config=DATA_CONFIG,
    )
    images, labels = make_images(32, seed=1)
    x = torch.from_numpy(np.stack([model.preprocessor(Image.fromarray(i[..., 0])) for i in images]))
    trainer = pl.Trainer(
        max_epochs=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(TensorDataset(x, torch.from_numpy(labels)), batch_size=16, shuffle=True))
    torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> ImageClassifier:
    torch.manual_seed(0)
    model = ImageClassifier(
        BackboneConfig("resnet18", pretrained=False), num_classes=3, class_names=["a", "b", "c"], scheduler=None
    )
    model.apply_data_info(["a", "b", "c"], make_data_config(model.backbone, 3, 32))
    return model.eval()


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
@pytest.mark.parametrize("crop_pct", [0.875, 1.0])
@pytest.mark.parametrize("in_chans,image_size", [(3, 32), (3, (24, 40)), (1, 28)])
def test_preprocessor_equals_timm_eval_transform(crop_mode, crop_pct, in_chans, image_size):
    config = {**make_data_config(None, in_chans, image_size), "crop_pct": crop_pct, "crop_mode": crop_mode}
    for interpolation in ("bicubic", "bilinear"):
        config["interpolation"] = interpolation
        timm_transform, ours = build_eval_transform(config), Preprocessor(config)
        rng = np.random.default_rng(0)
        for width, height in [(50, 37), (37, 50), (32, 32), (20, 12), (90, 200)]:
            image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
            image = image.convert("L" if in_chans == 1 else "RGB")
            np.testing.assert_array_equal(ours(image), timm_transform(image).numpy())


def test_preprocessor_views_and_denormalize():
    pre = Preprocessor({**DATA_CONFIG, "input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.25] * 3})
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8))
    flip = pre.views(image, "flip")
    assert flip.shape == (2, 3, 16, 16)
    np.testing.assert_array_equal(flip[1], flip[0][:, :, ::-1])
    assert pre.views(image, "crops").shape == (5, 3, 16, 16)
    assert pre.views(image, "flip_crops").shape == (10, 3, 16, 16)
    np.testing.assert_array_equal(pre.views(image, False)[0], pre(image))
    back = pre.denormalize(pre(image.resize((16, 16))))
    assert back.dtype == np.uint8 and back.shape == (16, 16, 3)
    with pytest.raises(ValueError, match="`tta` must be"):
        pre.views(image, "rotate")
    with pytest.raises(ValueError, match="interpolation"):
        Preprocessor({**DATA_CONFIG, "interpolation": "sinc"})
    with pytest.raises(ValueError, match="lacks"):
        Preprocessor({"mean": [0.5]})


# --------------------------------------------------------------------------- inputs


def _write_images(folder: Path, count: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_collect_inputs_every_kind(tmp_path):
    paths = _write_images(tmp_path / "pics" / "sub")
    (tmp_path / "pics" / ".hidden").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "pics" / ".hidden" / "skip.png")
    (tmp_path / "pics" / "notes.txt").write_text("not an image")
    assert [s.path for s in collect_inputs(tmp_path / "pics")] == paths  # recursive, sorted, hidden skipped
    assert [s.source for s in collect_inputs(str(paths[0]))] == [str(paths[0])]
    assert len(collect_inputs(str(tmp_path / "pics" / "**" / "*.png"))) == 3
    assert len(collect_inputs([paths[0], str(paths[1])])) == 2
    array = np.zeros((10, 12, 3), np.uint8)
    assert len(collect_inputs(Image.new("RGB", (5, 5)))) == 1
    assert len(collect_inputs(array)) == 1
    assert len(collect_inputs(array[:, :, 0])) == 1
    assert len(collect_inputs(np.zeros((4, 10, 12, 1), np.uint8))) == 4
    assert len(collect_inputs(torch.rand(3, 10, 12))) == 1
    assert len(collect_inputs(torch.rand(2, 3, 10, 12))) == 2
    source = ImageSource(None, image=Image.new("L", (3, 3)))
    assert collect_inputs([source, array])[0] is source
    assert collect_inputs(np.full((2, 2, 3), 1.0))[0].load(3).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    "value,error,match",
    [
        ("/no/such/file.png", FileNotFoundError, "not found: '/no/such/file.png'"),
        ("/no/such/*.png", FileNotFoundError, "No image files match"),
        (42, TypeError, "Cannot predict on a int"),
        ({"a": 1}, TypeError, "`inputs` must be"),
        ([], ValueError, "`inputs` is empty"),
        (np.zeros((3, 10, 12)), ValueError, r"transpose it to \(H, W, C\)"),
        (np.zeros((5,)), ValueError, "not an image"),
        (np.full((4, 4, 3), -0.5), ValueError, "looks normalised"),
    ],
)
def test_collect_inputs_errors(value, error, match):
    with pytest.raises(error, match=match):
        collect_inputs(value)


def test_empty_folder_error(tmp_path):
    with pytest.raises(ValueError, match="has no images"):
        collect_inputs(tmp_path)


# --------------------------------------------------------------------------- predict


def test_predict_every_input_kind_agrees(tiny, tmp_path):
    path = tmp_path / "one.png"
    pixels = np.random.default_rng(3).integers(0, 256, (40, 36, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    kinds = [
        path,
        str(path),
        [path],
        str(tmp_path / "*.png"),
        tmp_path,
        Image.fromarray(pixels),
        pixels,
        pixels[None],
        pixels.astype(np.float32) / 255,
        torch.from_numpy(pixels).permute(2, 0, 1).contiguous(),
        torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255,
    ]
    results = [tiny.predict(kind, top_k=3) for kind in kinds]
    reference = results[0][0]
    assert reference.source == str(path)
    for result in results:
        assert len(result) == 1
        assert result[0].labels == reference.labels
        np.testing.assert_allclose(result[0].probabilities, reference.probabilities, atol=1e-5)
    assert results[5][0].source is None


def test_top_k_order_names_and_batching(tiny):
    images = list(np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8))
    batched = tiny.predict(images, top_k=3, batch_size=3)
    single = [tiny.predict(image, top_k=3, batch_size=1)[0] for image in images]
    logits, _ = tiny.predict_logits(images)
    probs = torch.from_numpy(logits).softmax(1).numpy()
    for b, s, row in zip(batched, single, probs, strict=True):
        assert b.probabilities == sorted(b.probabilities, reverse=True)
        assert b.labels == [tiny.class_names[i] for i in b.indices]
        assert b.indices == list(np.argsort(-row)[:3])
        np.testing.assert_allclose(b.probabilities, row[b.indices], atol=1e-5)
        assert b.labels == s.labels
        np.testing.assert_allclose(b.probabilities, s.probabilities, atol=1e-5)
    assert len(tiny.predict(images[0])[0].labels) == 3  # default top_k: 5, capped at the 3 classes


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"top_k": 4}, r"`top_k` must be an int in \[1, 3\] \(the model has 3 classes\), got 4"),
        ({"top_k": 0}, "`top_k`"),
        ({"batch_size": 0}, "`batch_size`"),
        ({"threshold": 1.5}, "`threshold`"),
        ({"tta": "sideways"}, "`tta`"),
    ],
)
def test_predict_bad_arguments(tiny, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny.predict(np.zeros((8, 8, 3), np.uint8), **kwargs)


def test_unreadable_files(tiny, tmp_path):
    good = _write_images(tmp_path, 2)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"Cannot read image '.*broken.png'.*skip_bad_images=True"):
        tiny.predict([good[0], bad, good[1]])
    with pytest.warns(UserWarning, match="Skipped 1 unreadable image"):
        predictions = tiny.predict([good[0], bad, good[1]], skip_bad_images=True)
    assert [p.source for p in predictions] == [str(good[0]), str(good[1])]
    with pytest.raises(ValueError, match="None of the 1 images"), pytest.warns(UserWarning):
        tiny.predict(bad, skip_bad_images=True)


def test_multi_label_threshold():
    predictions = decode(np.array([[3.0, -3.0, 0.5], [-4.0, -4.0, -4.0]]), ["a", "b", "c"], multi_label=True)
    assert predictions[0].labels == ["a", "c"]
    assert predictions[1].labels == [] and predictions[1].label is None
    model = ImageClassifier(BackboneConfig("resnet18", pretrained=False), num_classes=3, multi_label=True)
    out = model.predict(np.zeros((32, 32, 3), np.uint8), threshold=0.01)
    assert len(out[0].labels) == 3 and all(p >= 0.01 for p in out[0].probabilities)


def test_predict_keeps_training_mode_and_uses_temperature(tiny):
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    tiny.train()
    before = tiny.predict(image, top_k=3)[0]
    assert tiny.training
    tiny.eval()
    tiny.temperature.fill_(4.0)
    try:
        hot = tiny.predict(image, top_k=3)[0]
    finally:
        tiny.temperature.fill_(1.0)
    assert hot.labels == before.labels and hot.probabilities[0] < before.probabilities[0]


# --------------------------------------------------------------------------- TTA


def test_tta_changes_nothing_for_a_mirror_symmetric_image(trained):
    half = np.random.default_rng(5).integers(0, 256, (SIZE, SIZE // 2, 1), dtype=np.uint8)
    symmetric = np.concatenate([half, half[:, ::-1]], axis=1)
    plain = trained.predict(symmetric, top_k=4)[0]
    tta = trained.predict(symmetric, top_k=4, tta=True)[0]
    assert plain.labels == tta.labels
    np.testing.assert_allclose(plain.probabilities, tta.probabilities, atol=1e-5)


def test_tta_helps_on_flip_augmented_test_images(trained):
    images, labels = make_images(12, seed=2)
    flipped = np.arange(len(labels)) % 2 == 1
    images[flipped] = images[flipped][:, :, ::-1]

    def accuracy(tta):
        return np.mean([p.indices[0] == y for p, y in zip(trained.predict(list(images), tta=tta), labels, strict=True)])

    plain, tta = accuracy(False), accuracy(True)
    assert tta >= 0.85
    assert tta >= plain + 0.2, (plain, tta)
    assert trained.predict(list(images[:4]), tta="flip_crops")[0].labels  # ten views run


# --------------------------------------------------------------------------- load / save


def test_save_load_round_trip(trained, tmp_path):
    images, _ = make_images(2, seed=3)
    trained.temperature.fill_(1.7)
    try:
        path = trained.save(tmp_path / "sub" / "model.ckpt")
        expected = trained.predict(list(images), top_k=2)
    finally:
        trained.temperature.fill_(1.0)
    loaded = ImageClassifier.load(path, map_location="cpu")
    assert not loaded.training
    assert float(loaded.temperature) == pytest.approx(1.7)
    assert loaded.class_names == CLASSES and loaded.data_config == DATA_CONFIG
    for a, b in zip(loaded.predict(list(images), top_k=2), expected, strict=True):
        assert a.labels == b.labels
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
    assert not list((tmp_path / "sub").glob("*.tmp"))


def test_load_old_checkpoint_without_temperature(tiny, tmp_path):
    path = tiny.save(tmp_path / "model.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["state_dict"]["temperature"]
    torch.save(checkpoint, path)
    assert float(ImageClassifier.load(path).temperature) == 1.0


def test_load_missing_file():
    with pytest.raises(FileNotFoundError, match=r"Checkpoint not found: '/no/model\.ckpt'"):
        ImageClassifier.load("/no/model.ckpt")


# --------------------------------------------------------------------------- review regressions


def test_bfloat16_model_predicts(tiny):
    image = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    model = ImageClassifier(BackboneConfig("resnet18", pretrained=False), num_classes=3, class_names=["a", "b", "c"])
    model.load_state_dict(tiny.state_dict())
    model.apply_data_info(["a", "b", "c"], tiny.data_config)
    reference = model.predict(image, top_k=3)[0]
    predictions = model.to(torch.bfloat16).predict(image, top_k=3)[0]
    assert predictions.labels[0] == reference.labels[0]


def test_numpy_hyperparameters_save_and_load(tmp_path):
    config = {**make_data_config(None, 3, 32), "mean": np.array([0.5, 0.5, 0.5])}
    model = ImageClassifier(
        BackboneConfig("resnet18", pretrained=False), num_classes=3, lr=np.float64(1e-3), data_config=config
    )
    loaded = ImageClassifier.load(model.save(tmp_path / "m.ckpt"))
    assert loaded.hparams.lr == 1e-3 and loaded.data_config["mean"] == [0.5, 0.5, 0.5]


def test_vit_built_with_its_own_size_predicts_at_that_size():
    backbone = BackboneConfig("test_vit", pretrained=False, extra_kwargs={"img_size": 48})
    model = ImageClassifier(backbone, num_classes=3)
    assert model.preprocessor.input_size == (3, 48, 48)
    assert len(model.predict(np.zeros((40, 40, 3), np.uint8))) == 1


def test_multi_label_top_k_caps_the_labels():
    predictions = decode(np.array([[3.0, 2.0, 1.0]]), ["a", "b", "c"], multi_label=True, top_k=2)
    assert predictions[0].labels == ["a", "b"]


def test_load_rejects_foreign_files_and_unavailable_cuda(tmp_path, tiny):
    garbage = tmp_path / "bad.ckpt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="is not an autotimm checkpoint"):
        ImageClassifier.load(garbage)
    foreign = tmp_path / "other.ckpt"
    torch.save({"foo": 1}, foreign)
    with pytest.raises(ValueError, match="is not an autotimm checkpoint"):
        ImageClassifier.load(foreign)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            ImageClassifier.load(tiny.save(tmp_path / "m.ckpt"), map_location="cuda")


def test_predict_logits_checks_batch_size_and_tta(tiny):
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"`batch_size` must be an int >= 1, got 0"):
        tiny.predict_logits(image, batch_size=0)
    with pytest.raises(ValueError, match="`tta` must be"):
        tiny.predict_logits(image, tta="sideways")


def test_crops_of_an_image_used_whole_are_the_crop_flip_shifts():
    # crop_pct 1 (small images used whole): the corners are the image shifted by crop_flip's padding (2 px at
    # 28 px), the border filled with black, as the training augmentation fills it; not five copies of the centre.
    config = {"input_size": [1, 28, 28], "crop_pct": 1.0, "mean": [0.0], "std": [1.0], "interpolation": "bilinear"}
    pre = Preprocessor(config)
    pixels = np.random.default_rng(0).integers(1, 256, (28, 28), dtype=np.uint8)
    views = pre.views(Image.fromarray(pixels), "flip_crops")
    scaled = pixels / np.float32(255)
    np.testing.assert_array_equal(views[0, 0], scaled)  # the centre crop is the image
    top_left = np.zeros((28, 28), np.float32)
    top_left[2:, 2:] = scaled[:-2, :-2]  # content moved 2 px down and right
    np.testing.assert_allclose(views[1, 0], top_left)
    np.testing.assert_allclose(views[4, 0, :-2, :-2], scaled[2:, 2:])
    assert len({view.tobytes() for view in views}) == 10
    # With a margin (crop_pct < 1) the corners are those of the resized image, as before.
    margin = Preprocessor({**config, "crop_pct": 0.875})
    assert margin.views(Image.fromarray(pixels), "crops")[1].min() > 0  # no padding: every pixel is the image's
