"""Two "machines" on one: what each ``torchrun --nnodes=2`` launch of ``tests/test_multinode.py`` runs.

``python multinode_script.py folder|shards DATA OUTPUT``: trains one epoch of
``test_resnet`` on CPU (gloo) with ``num_nodes=2`` and writes the ids of the
training samples this rank loaded to ``OUTPUT/ids_rank<RANK>.txt``; rank 0
prints the best checkpoint as a JSON line. Every check of the image files at
set-up appends ``<RANK> <files>`` to ``OUTPUT/image_checks.txt`` (rank 0 alone
should check; the other rank reads its result).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from torch.utils.data import Dataset

import autotimm.data.checked as checked
from autotimm import AutoTrainer, BackboneConfig, ImageClassifier, ImageDataModule


class RecordedIds:
    """Append each loaded sample's id to a file (one per rank), then hand the sample on."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, sample_id: str) -> None:
        with self.path.open("a") as file:
            file.write(f"{sample_id}\n")


class RecordedDataset(Dataset):
    """A map-style training dataset whose loads are recorded (folder data)."""

    def __init__(self, dataset: Dataset, items: list[str], record: RecordedIds) -> None:
        self.dataset, self.items, self.record = dataset, items, record

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        self.record.write(self.items[index])
        return self.dataset[index]


class RecordedDecoder:
    """A shard decoder whose samples are recorded (shard data)."""

    def __init__(self, decoder, record: RecordedIds) -> None:
        self.decoder, self.record = decoder, record

    def __call__(self, item):
        self.record.write(str(item["id"]))
        return self.decoder(item)


class RecordingData(ImageDataModule):
    """The data module, recording which training samples this rank loads."""

    record: RecordedIds

    def dataset(self, split, augment=None):
        dataset = super().dataset(split, augment)
        if split != "train":
            return dataset
        if hasattr(dataset, "transform") and self.source == "shards":  # a LitData StreamingDataset
            steps = dataset.transform if isinstance(dataset.transform, list) else [dataset.transform]
            dataset.transform = [RecordedDecoder(steps[0], self.record), *steps[1:]]
            return dataset
        return RecordedDataset(dataset, list(self.tables["train"].items), self.record)


def count_image_checks(out: Path) -> None:
    """Record every set-up check of the image files in ``out/image_checks.txt``, with the rank that ran it."""
    find = checked.find_bad_images

    def counted(paths, mode="full"):
        out.mkdir(parents=True, exist_ok=True)
        with (out / "image_checks.txt").open("a") as file:
            file.write(f"{os.environ['RANK']} {len(paths)}\n")
        return find(paths, mode)

    checked.find_bad_images = counted


def main(mode: str, data: str, output: str) -> None:
    out = Path(output)
    count_image_checks(out)
    source = {"shards": data} if mode == "shards" else {"data_dir": data, "val_split": 0.25, "test_split": 0.0}
    datamodule = RecordingData(
        **source, image_size=16, batch_size=3, num_workers=0, seed=0, output_dir=out, augmentation="none"
    )
    datamodule.record = RecordedIds(out / f"ids_rank{os.environ['RANK']}.txt")
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3, lr=1e-3)
    trainer = AutoTrainer(
        output_dir=out,
        accelerator="cpu",
        devices=1,
        num_nodes=2,
        strategy="ddp",
        max_epochs=1,
        seed=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=datamodule)
    if trainer.is_global_zero:
        result = {"world_size": trainer.world_size, "checkpoint": trainer.checkpoint_callback.best_model_path}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
