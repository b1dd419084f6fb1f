"""``autotimm shard``: convert a folder, CSV or dataset into LitData shards for ``ImageDataModule(shards=...)``."""

from __future__ import annotations

from dataclasses import dataclass, field

from autotimm.cli.fields import UsageError, number
from autotimm.cli.options import positional

__all__ = ["CONFIG", "ShardConfig", "run"]

NAME = "shard"
HELP = "Convert image data into LitData shards for streaming (local disk or object storage)."
DESCRIPTION = """\
Convert SOURCE (a class folder, a CSV file, a Hugging Face dataset folder or
Parquet files, hf:NAME for a Hub dataset, or a built-in dataset name, read
and split exactly as `autotimm train` reads and splits it) into LitData's
optimized format in OUTPUT: one folder per split (OUTPUT/train, OUTPUT/val,
OUTPUT/test) of shard files holding each image's encoded bytes (as stored,
never decoded pixels), its label and its file name, plus autotimm_shards.json
(class names, split sizes, class counts) and splits.json. Train from it with
ImageDataModule(shards="OUTPUT") or ImageDataModule(shards="s3://bucket/prefix")
after copying OUTPUT to object storage. Needs the `stream` extra
(pip install "autotimm[stream]")."""
EXAMPLES = """\
examples:
  autotimm shard data/pets shards/pets
  autotimm shard data/pets shards/pets --shard-size 64MB --workers 4
  aws s3 sync shards/pets s3://my-bucket/pets     # then ImageDataModule(shards="s3://my-bucket/pets")"""


@dataclass
class ShardConfig:
    """Options of ``autotimm shard``.

    Args:
        source: A class folder, a CSV file (image and label columns), a Hugging Face dataset folder or Parquet
            files, hf:NAME for a Hub dataset, or a built-in dataset name.
        output: The local folder to write the shards to; its existing split folders are replaced.
        shard_size: Bytes per shard file, e.g. 256MB, 64MB, 1GB.
        workers: Processes that read and write the images.
        val_split: Fraction of the images held out for validation when SOURCE has no validation split, in [0, 1).
        test_split: Fraction held out for testing when SOURCE has no test split, in [0, 1).
        seed: Seed of the split: the same as training's gives the same split (>= 0).
        quiet: Print only the summary, no progress bars.
    """

    source: str = field(metadata=positional(metavar="SOURCE"))
    output: str = field(metadata=positional(metavar="OUTPUT"))
    shard_size: str = "256MB"
    workers: int = field(default=1, metadata=number(1))
    val_split: float = field(default=0.2, metadata=number(0, 1))
    test_split: float = field(default=0.1, metadata=number(0, 1))
    seed: int = field(default=42, metadata=number(0))
    quiet: bool = False


#: The options dataclass of this subcommand.
CONFIG = ShardConfig


def run(config: ShardConfig) -> int:
    """Read and split SOURCE, write the shards, and print a summary.

    Args:
        config: The options.

    Returns:
        0.

    Raises:
        UsageError: A bad --shard-size, or --val-split + --test-split >= 1.
        ImportError: LitData is not installed (the message names the extra).
        FileNotFoundError: SOURCE does not exist.
        ValueError: Unreadable data.
    """
    from autotimm.cli.common import console
    from autotimm.data.datamodule import ImageDataModule
    from autotimm.data.shards import check_shard_size, import_litdata, size_text, write_shards
    from autotimm.data.sources import data_source

    try:
        check_shard_size(config.shard_size)
    except ValueError as err:
        raise UsageError(str(err).replace("`shard_size`", "--shard-size")) from None
    if config.val_split + config.test_split >= 1:
        raise UsageError(f"--val-split + --test-split must be < 1, got {config.val_split} + {config.test_split}")
    import_litdata()  # fail before reading the data
    data = ImageDataModule(
        **data_source(config.source, "SOURCE"),
        val_split=config.val_split,
        test_split=config.test_split,
        seed=config.seed,
        output_dir=config.output,
        num_workers=0,
    )
    out = console()
    out.print(f"Reading and splitting {config.source} ...", highlight=False)
    data.setup()
    sizes = ", ".join(f"{split} {len(table)}" for split, table in data.tables.items())
    out.print(
        f"{len(data.class_names)} classes; {sizes} images. Writing shards to {config.output} ...", highlight=False
    )
    summary = write_shards(data, config.output, config.shard_size, config.workers, verbose=not config.quiet)
    out.print(str(summary), highlight=False)
    for split in summary.images:
        out.print(
            f"  {split}: {summary.images[split]} images, {summary.shards[split]} shards, "
            f"{size_text(summary.bytes[split])}",
            highlight=False,
        )
    out.print(f'Train from it with ImageDataModule(shards="{config.output}")', highlight=False)
    return 0
