"""Batched tensor loading of in-memory images: equal to the Pillow path, and a real pad-crop-flip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from autotimm.data import ImageDataModule
from autotimm.data.array_batches import ArrayBatchDataset, supports_batched_arrays
from autotimm.data.dataset import ImageDataset
from autotimm.data.images import crop_padding
from autotimm.data.transforms import build_train_transform, list_augmentation_presets


def module(shape=(40, 12, 12), in_chans=1, image_size=12, augmentation="none", seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    labels = np.arange(shape[0]) % 4
    dm = ImageDataModule(
        images=images,
        labels=labels,
        output_dir=None,
        image_size=image_size,
        in_chans=in_chans,
        augmentation=augmentation,
        batch_size=8,
        val_split=0.25,
    )
    dm.setup()
    return dm


@pytest.mark.parametrize(
    ("shape", "in_chans"), [((40, 12, 12), 1), ((40, 12, 12), 3), ((40, 12, 12, 1), 3), ((40, 12, 12, 3), 3)]
)
def test_evaluation_batches_equal_the_pillow_path(shape, in_chans):
    dm = module(shape, in_chans)
    dataset = dm.dataset("val")
    assert isinstance(dataset, ArrayBatchDataset)
    reference = ImageDataset(dm._require_setup()["val"], dm.num_classes, dm.eval_transform, in_chans)
    images, targets = dataset.batch(list(range(len(dataset))))
    expected = torch.stack([reference[i][0] for i in range(len(reference))])
    assert images.shape == expected.shape == (len(dataset), in_chans, 12, 12)
    assert torch.equal(images, expected)
    assert targets.tolist() == [reference[i][1].item() for i in range(len(reference))]
    image, target = dataset[3]  # one sample, as ImageDataset gives it
    assert torch.equal(image, expected[3]) and target.item() == targets[3].item()


def test_loaders_fetch_whole_batches_through_getitems():
    dm = module(augmentation="crop_flip")
    calls = []
    dataset = dm.dataset("train")
    original = dataset.batch
    dataset.batch = lambda indices: calls.append(len(indices)) or original(indices)
    loader = DataLoader(dataset, batch_size=8, shuffle=True)
    batches = list(loader)
    assert calls == [8] * (len(dataset) // 8) + ([len(dataset) % 8] if len(dataset) % 8 else [])
    assert batches[0][0].shape == (8, 1, 12, 12) and batches[0][1].dtype == torch.int64
    assert isinstance(dm.train_dataloader().dataset, ArrayBatchDataset)


def test_crop_flip_is_a_shifted_and_maybe_mirrored_crop_of_the_padded_image():
    dm = module(augmentation="crop_flip", shape=(40, 28, 28), image_size=28)
    dataset = dm.dataset("train")
    pad = crop_padding(28, 28)
    assert pad == 2 and dataset.padding == pad
    plain = dm.dataset("train", augment=False)
    torch.manual_seed(0)
    indices = list(range(16))
    augmented, _ = dataset.batch(indices)
    clean, _ = plain.batch(indices)
    zero = (0 - dataset.mean) / dataset.std  # a padded (black) pixel after normalisation
    shifts, flips = set(), 0
    for out, image in zip(augmented, clean, strict=True):
        padded = torch.nn.functional.pad(image[None], (pad,) * 4, value=float(zero.flatten()[0]))[0]
        found = [
            (dy, dx, mirrored)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for mirrored in (False, True)
            if torch.allclose(
                (padded[:, dy : dy + 28, dx : dx + 28].flip(-1) if mirrored else padded[:, dy : dy + 28, dx : dx + 28]),
                out,
                atol=1e-6,
            )
        ]
        assert found, "each augmented image is a crop of the padded image, mirrored or not"
        shifts.add(found[0][:2])
        flips += found[0][2]
    assert len(shifts) > 3 and 0 < flips < 16  # random offsets and random flips


def test_pillow_crop_flip_pads_crops_and_flips():
    config = {"input_size": [1, 28, 28], "mean": [0.5], "std": [0.5], "interpolation": "bicubic", "crop_pct": 1.0}
    names = [type(t).__name__ for t in build_train_transform("crop_flip", config).transforms]
    assert names[-4:] == ["RandomCrop", "RandomHorizontalFlip", "MaybeToTensor", "Normalize"]
    assert "crop_flip" in list_augmentation_presets()


def test_other_sizes_presets_and_custom_transforms_keep_the_pillow_path():
    assert not isinstance(module(image_size=16).dataset("val"), ArrayBatchDataset)  # needs a resize
    assert not isinstance(module(augmentation="light").dataset("train"), ArrayBatchDataset)
    assert isinstance(module(augmentation="light").dataset("val"), ArrayBatchDataset)  # eval is still batched
    custom = module(augmentation=lambda image: torch.zeros(1, 12, 12))
    assert not isinstance(custom.dataset("train"), ArrayBatchDataset)
    dm = module(shape=(40, 12, 12, 3), in_chans=1)  # RGB to grey goes through Pillow's conversion
    assert not supports_batched_arrays(dm._require_setup()["val"], dm.data_config, 1)
