"""``autotimm push``: upload a model to the Hugging Face Hub as a timm model folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from autotimm.cli.options import UsageError, positional

__all__ = ["CONFIG", "PushConfig", "run"]

NAME = "push"
HELP = "Upload a model to the Hugging Face Hub (model.safetensors, config.json, README.md)."
DESCRIPTION = """\
Upload a trained classifier to a Hugging Face Hub model repository, created
private unless --public. MODEL is a .ckpt checkpoint (the model folder is
written first, as `autotimm export --format hf` does, with the run's newest
evaluation metrics in the model card) or a folder that `export --format hf`
wrote. The repository then loads with ImageClassifier.from_pretrained(REPO_ID)
and with plain timm: timm.create_model("hf-hub:REPO_ID", pretrained=True).

The token is --token, else the stored login (`hf auth login`) or HF_TOKEN.
With HF_HUB_OFFLINE=1, or without a network, it fails at once with one line."""
EXAMPLES = """\
examples:
  autotimm push runs/pets/checkpoints/best.ckpt me/pets-resnet18
  autotimm export runs/pets/checkpoints/best.ckpt --format hf --output pets-hf
  autotimm push pets-hf me/pets-resnet18 --public"""


@dataclass
class PushConfig:
    """Options of ``autotimm push``.

    Args:
        model: A .ckpt checkpoint, or a model folder written by `autotimm export --format hf`.
        repo_id: The Hub repository: name or user/name.
        public: Create the repository public (default: private).
        token: A Hub token with write access; default: the stored login or HF_TOKEN.
        license: The license id of the model card (for a .ckpt MODEL).
        metrics: For a .ckpt MODEL: an evaluation's metrics.json for the card; default: the run's newest.
    """

    model: str = field(metadata=positional())
    repo_id: str = field(metadata=positional())
    public: bool = False
    token: str | None = None
    license: str = "apache-2.0"
    metrics: str | None = None


#: The options dataclass of this subcommand.
CONFIG = PushConfig


def run(config: PushConfig) -> int:
    """Upload as ``config`` says and print the repository URL.

    Args:
        config: The options.

    Returns:
        0.

    Raises:
        UsageError: A bad REPO_ID or MODEL.
        HubUnavailableError: Offline, or the Hub cannot be reached.
    """
    from autotimm.classifier.pretrained import check_repo_id, is_pretrained_folder, upload_folder

    try:
        check_repo_id(config.repo_id)
    except ValueError as err:
        raise UsageError(str(err).replace("`repo_id`", "REPO_ID")) from None
    path = Path(config.model).expanduser()
    if path.is_dir():
        if not is_pretrained_folder(path):
            raise UsageError(f"MODEL {config.model!r} is a folder without config.json and model.safetensors")
        url = upload_folder(path, config.repo_id, private=not config.public, token=config.token)
    elif path.suffix.lower() == ".ckpt" and path.is_file():
        from autotimm.classifier.module import ImageClassifier
        from autotimm.cli.export import card_details

        model = ImageClassifier.load(path)
        url = model.push_to_hub(
            config.repo_id,
            private=not config.public,
            token=config.token,
            license=config.license,
            **card_details(path, config.metrics),
        )
    else:
        raise UsageError(f"MODEL {config.model!r} must be a .ckpt checkpoint or a folder from export --format hf")
    from autotimm.cli.common import console

    console().print(f"Uploaded to {url}", highlight=False)
    return 0
