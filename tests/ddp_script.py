"""train_ddp.py: train on two CPU processes with Lightning's ``ddp`` strategy.

Run it as a script: ``python train_ddp.py [OUTPUT_DIR]``. ``strategy="ddp"``
starts rank 1 by running this file again, so everything in it runs in both
processes; keep the work under ``if __name__ == "__main__":``. Each rank
prints one JSON line: what it evaluated and the (synced) metrics it sees.
"""

from __future__ import annotations

import json
import sys

from autotimm import AutoTrainer, BackboneConfig, ImageClassifier, ImageDataModule, LoggingConfig


def main(output_dir: str = "runs/ddp") -> None:
    data = ImageDataModule(
        dataset="digits",
        image_size=32,
        val_split=0.1,  # 180 images: 90 per rank
        test_split=0.055,  # 99 images: the sampler repeats one to give each rank 50
        batch_size=32,  # per process: 64 images per optimizer step on 2 processes
        num_workers=0,
        seed=0,
        output_dir=output_dir,
    )
    model = ImageClassifier(
        BackboneConfig("test_resnet", pretrained=False),
        num_classes=10,
        lr=2e-3,
        logging_config=LoggingConfig(log_confusion_matrix=True),
    )
    trainer = AutoTrainer(
        output_dir=output_dir,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        seed=0,
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=data)
    summary = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "val_images_on_this_rank": len(trainer.val_dataloaders.sampler),
        "metrics": {name: float(value) for name, value in trainer.callback_metrics.items()},
        "best_checkpoint": trainer.checkpoint_callback.best_model_path,
        "confusion_matrix": model.val_confusion_matrix_values.tolist(),
    }
    (test_metrics,) = trainer.test(model, datamodule=data, ckpt_path="best", verbose=False)
    summary["test_images_on_this_rank"] = len(trainer.test_dataloaders.sampler)
    summary["test_metrics"] = test_metrics
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:2])
