"""Optimizer registry and factory: every name trains, dict form, weight-decay groups, errors."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from conftest import make_trainer
from torch import nn
from torch.utils.data import DataLoader

from autotimm import BackboneConfig, ImageClassifier, create_optimizer, list_optimizers, make_synthetic_dataset
from autotimm.optim.optimizers import get_optimizer
from autotimm.registry import Registry, import_from_path

TORCH_OPTIMIZERS = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}
# timm's "radam" is torch's RAdam; the others are timm's own classes.
TIMM_OPTIMIZERS = {
    "adamp": "AdamP",
    "sgdp": "SGDP",
    "adabelief": "AdaBelief",
    "radam": "RAdam",
    "lamb": "Lamb",
    "lars": "Lars",
    "madgrad": "MADGRAD",
    "novograd": "NvNovoGrad",
}
ALL_NAMES = [*TORCH_OPTIMIZERS, *TIMM_OPTIMIZERS]
# LARS scales each update by a trust ratio and is conventionally run at lr ~1.
LEARNING_RATES = {"lars": 1.0}
TINY_BACKBONE = BackboneConfig("test_resnet", pretrained=False)

pytestmark = [
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
    pytest.mark.usefixtures("single_thread"),
]


def _separable_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=gen)
    y = (x @ torch.randn(8, generator=gen) > 0).long()
    return x, y


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 2))


class _ConvNet(nn.Module):
    """Conv + BatchNorm + LayerNorm + Linear, plus a frozen layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x)).mean((2, 3))
        return self.frozen(self.norm(self.fc(x)))


def _group_of(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    """Map id(param) -> its param group."""
    return {id(p): group for group in optimizer.param_groups for p in group["params"]}


def _loader(num_batches: int = 3, batch_size: int = 4) -> DataLoader:
    data = make_synthetic_dataset(num_classes=2, samples_per_class=num_batches * batch_size // 2, image_size=16)
    return DataLoader(data, batch_size=batch_size)


# ---------------------------------------------------------------- registry


def test_list_optimizers_names_every_torch_and_timm_optimizer():
    # Names registered later (by users, or by a doctest) come after the built-in ones.
    assert list_optimizers()[: len(ALL_NAMES)] == ALL_NAMES


def test_registry_is_case_insensitive_and_rejects_duplicates():
    reg = Registry("widget", argument="widget")

    @reg.register("Plain")
    def _plain():
        return "built"

    assert reg.names() == ["plain"]
    assert "PLAIN" in reg and "other" not in reg and 3 not in reg
    assert reg.get("pLaIn")() == "built"
    with pytest.raises(ValueError, match="widget 'plain' is already registered"):
        reg.register("plain")(_plain)
    with pytest.raises(ValueError, match=r"Unknown widget 'plane' for argument `widget`\. Did you mean 'plain'\?"):
        reg.get("plane")
    # Not a name at all (even an unhashable one): the same helpful error, not a TypeError.
    for bad in (None, 3, ["plain"]):
        with pytest.raises(ValueError, match=rf"Unknown widget {bad!r}".replace("[", r"\[").replace("]", r"\]")):
            reg.get(bad)


def test_import_from_path_resolves_and_explains_failures():
    assert import_from_path("torch.optim.AdamW", argument="optimizer") is torch.optim.AdamW
    with pytest.raises(ValueError, match=r"`optimizer` class must be a dotted path .* got 'AdamW'"):
        import_from_path("AdamW", argument="optimizer")
    with pytest.raises(ValueError, match=r"cannot import module 'no_such_package_xyz'"):
        import_from_path("no_such_package_xyz.Optim", argument="optimizer")
    with pytest.raises(ValueError, match=r"module 'torch.optim' has no attribute 'NoSuchOptim'"):
        import_from_path("torch.optim.NoSuchOptim", argument="optimizer")


# ------------------------------------------------------------ every name


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_optimizer_lowers_the_loss_and_moves_every_parameter(name):
    x, y = _separable_data()
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = create_optimizer(model, name, lr=LEARNING_RATES.get(name, 0.05), weight_decay=1e-4)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    for old, new in zip(before, model.parameters(), strict=True):
        assert not torch.equal(old, new)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_name_builds_its_optimizer_class_with_lr_and_groups(name):
    optimizer = create_optimizer(_mlp(), name, lr=0.02, weight_decay=0.05)
    expected = TORCH_OPTIMIZERS.get(name)
    if expected is not None:
        assert type(optimizer) is expected
    else:
        assert type(optimizer).__name__ == TIMM_OPTIMIZERS[name]
    assert optimizer.defaults["lr"] == 0.02
    assert all(group["lr"] == 0.02 for group in optimizer.param_groups)
    assert sorted(group["weight_decay"] for group in optimizer.param_groups) == [0.0, 0.05]


def test_names_are_case_insensitive_and_sgd_defaults_to_momentum():
    optimizer = create_optimizer(_mlp(), "SGD", lr=0.1)
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.defaults["momentum"] == 0.9
    plain = create_optimizer(_mlp(), "sgd", lr=0.1, optimizer_kwargs={"momentum": 0.0, "nesterov": False})
    assert plain.defaults["momentum"] == 0.0
    assert get_optimizer("AdamW") is get_optimizer("adamw")


def test_optimizer_kwargs_reach_timm_optimizers():
    optimizer = create_optimizer(_mlp(), "lamb", lr=0.01, optimizer_kwargs={"betas": (0.8, 0.95), "eps": 1e-5})
    assert optimizer.defaults["betas"] == (0.8, 0.95)
    assert optimizer.defaults["eps"] == 1e-5


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_optimizer_trains_an_image_classifier_end_to_end(name):
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(
        TINY_BACKBONE, num_classes=2, optimizer=name, lr=LEARNING_RATES.get(name, 1e-2), scheduler=None
    )
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    losses = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = make_trainer(max_epochs=1, callbacks=[Record()])
    trainer.fit(model, _loader(num_batches=3))
    assert trainer.global_step == 3
    optimizer = trainer.optimizers[0]
    assert type(optimizer).__name__ == (
        TORCH_OPTIMIZERS[name].__name__ if name in TORCH_OPTIMIZERS else TIMM_OPTIMIZERS[name]
    )
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    after = dict(model.named_parameters())
    for key in ("head.fc.weight", "backbone.conv1.0.weight"):
        assert not torch.equal(before[key], after[key]), key


# ------------------------------------------------------------------ dict form


def test_dict_form_passes_params_and_optimizer_kwargs_to_the_class():
    spec = {"class": "torch.optim.AdamW", "params": {"betas": (0.9, 0.99), "eps": 1e-7}}
    optimizer = create_optimizer(_mlp(), spec, lr=3e-3)
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["betas"] == (0.9, 0.99)
    assert optimizer.defaults["eps"] == 1e-7
    assert optimizer.defaults["lr"] == 3e-3
    # optimizer_kwargs override the dict's params; the dict itself is not modified.
    optimizer = create_optimizer(_mlp(), spec, lr=3e-3, optimizer_kwargs={"eps": 1e-5, "amsgrad": True})
    assert optimizer.defaults["eps"] == 1e-5
    assert optimizer.defaults["amsgrad"] is True
    assert optimizer.defaults["betas"] == (0.9, 0.99)
    assert spec == {"class": "torch.optim.AdamW", "params": {"betas": (0.9, 0.99), "eps": 1e-7}}


def test_dict_form_lr_in_params_wins_over_the_lr_argument():
    optimizer = create_optimizer(_mlp(), {"class": "torch.optim.SGD", "params": {"lr": 0.5}}, lr=0.1)
    assert optimizer.defaults["lr"] == 0.5
    assert all(group["lr"] == 0.5 for group in optimizer.param_groups)


@pytest.mark.parametrize(
    ("optimizer", "kwargs"),
    [
        ({"class": "torch.optim.SGD", "params": {"weight_decay": 0.3}}, None),
        ("adamw", {"weight_decay": 0.3}),
        ("lamb", {"weight_decay": 0.3}),
    ],
)
def test_weight_decay_given_as_an_optimizer_argument_is_applied_to_the_decayed_group(optimizer, kwargs):
    model = _ConvNet()
    opt = create_optimizer(model, optimizer, weight_decay=1e-4, optimizer_kwargs=kwargs)
    groups = _group_of(opt)
    assert groups[id(model.fc.weight)]["weight_decay"] == 0.3
    assert groups[id(model.fc.bias)]["weight_decay"] == 0.0


def test_image_classifier_builds_a_dict_form_optimizer():
    spec = {"class": "torch.optim.AdamW", "params": {"betas": (0.9, 0.99)}}
    model = ImageClassifier(
        TINY_BACKBONE, num_classes=2, optimizer=spec, optimizer_kwargs={"eps": 1e-6}, lr=2e-3, scheduler=None
    )
    optimizer = model.configure_optimizers()
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["betas"] == (0.9, 0.99)
    assert optimizer.defaults["eps"] == 1e-6
    assert optimizer.defaults["lr"] == 2e-3


def test_dict_form_optimizer_trains_in_a_fit():
    pl.seed_everything(0, verbose=False)
    spec = {"class": "torch.optim.SGD", "params": {"momentum": 0.5, "nesterov": True}}
    model = ImageClassifier(TINY_BACKBONE, num_classes=2, optimizer=spec, lr=0.05, scheduler=None)
    weight = model.head.fc.weight.detach().clone()
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, _loader(num_batches=2))
    optimizer = trainer.optimizers[0]
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.defaults["momentum"] == 0.5 and optimizer.defaults["nesterov"] is True
    assert not torch.equal(weight, model.head.fc.weight)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"params": {"lr": 0.1}},
            r"`optimizer` dict must have the keys 'class' and optionally 'params', got \['params'\]",
        ),
        (
            {"class": "torch.optim.AdamW", "kwargs": {}},
            r"`optimizer` dict must have the keys 'class' and optionally 'params', got \['class', 'kwargs'\]",
        ),
        ({"class": "torch.nn.Linear"}, r"`optimizer` class 'torch.nn.Linear' is not a torch.optim.Optimizer subclass"),
        (
            {"class": "torch.optim.lr_scheduler.StepLR"},
            r"'torch.optim.lr_scheduler.StepLR' is not a torch.optim.Optimizer subclass",
        ),
        ({"class": "torch.zeros"}, r"`optimizer` class 'torch.zeros' is not a torch.optim.Optimizer subclass"),
        ({"class": "no_such_package_xyz.Optimizer"}, r"cannot import module 'no_such_package_xyz'"),
        ({"class": "torch.optim.AdamX"}, r"module 'torch.optim' has no attribute 'AdamX'"),
        ({"class": "AdamW"}, r"must be a dotted path like 'torch.optim.AdamW', got 'AdamW'"),
        ({"class": 3}, r"must be a dotted path like 'torch.optim.AdamW', got 3"),
    ],
)
def test_bad_dict_forms_raise_value_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        create_optimizer(_mlp(), spec)


def test_optimizer_of_the_wrong_type_is_rejected():
    with pytest.raises(ValueError, match=r"`optimizer` must be a name or a dict, got int: 3"):
        create_optimizer(_mlp(), 3)


@pytest.mark.parametrize(
    ("optimizer", "kwargs"),
    [
        ("adamw", {"bogus": 1}),
        ("lamb", {"bogus": 1}),
        ({"class": "torch.optim.SGD", "params": {"bogus": 1}}, None),
    ],
)
def test_arguments_an_optimizer_does_not_take_raise_value_error(optimizer, kwargs):
    with pytest.raises(ValueError, match=r"optimizer '.+' rejected its arguments \['bogus', 'lr'\]"):
        create_optimizer(_mlp(), optimizer, optimizer_kwargs=kwargs)


# --------------------------------------------------------------- weight decay


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "lamb", "lars", {"class": "torch.optim.RMSprop"}])
def test_weight_decay_only_on_weights_and_frozen_parameters_left_out(optimizer):
    model = _ConvNet()
    opt = create_optimizer(model, optimizer, weight_decay=0.05)
    groups = _group_of(opt)
    decayed = {model.conv.weight, model.fc.weight}
    not_decayed = {model.conv.bias, model.bn.weight, model.bn.bias, model.fc.bias, model.norm.weight, model.norm.bias}
    for param in decayed:
        assert groups[id(param)]["weight_decay"] == 0.05
    for param in not_decayed:
        assert groups[id(param)]["weight_decay"] == 0.0
    # The frozen layer is absent; nothing else is there.
    assert id(model.frozen.weight) not in groups and id(model.frozen.bias) not in groups
    assert set(groups) == {id(p) for p in decayed | not_decayed}
    assert sum(len(group["params"]) for group in opt.param_groups) == len(groups)


def test_no_weight_decay_patterns_and_zero_weight_decay():
    model = _ConvNet()
    groups = _group_of(create_optimizer(model, "adamw", weight_decay=0.05, no_weight_decay=["fc.*"]))
    assert groups[id(model.fc.weight)]["weight_decay"] == 0.0
    assert groups[id(model.conv.weight)]["weight_decay"] == 0.05
    opt = create_optimizer(model, "adamw", weight_decay=0.0)
    assert [group["weight_decay"] for group in opt.param_groups] == [0.0]
    assert len(opt.param_groups[0]["params"]) == 8


def test_fully_frozen_model_raises_value_error():
    model = _mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        create_optimizer(model, "adamw")


def test_image_classifier_groups_frozen_backbone_and_no_weight_decay():
    probe = ImageClassifier(TINY_BACKBONE, num_classes=2, freeze_backbone=True, scheduler=None)
    optimizer = probe.configure_optimizers()
    assert set(_group_of(optimizer)) == {id(probe.head.fc.weight), id(probe.head.fc.bias)}
    assert _group_of(optimizer)[id(probe.head.fc.weight)]["weight_decay"] == probe.hparams.weight_decay

    # A ViT's position embedding and class token are 3-d but listed in its no_weight_decay().
    vit = ImageClassifier(
        BackboneConfig("test_vit", pretrained=False), num_classes=2, weight_decay=0.05, scheduler=None
    )
    groups = _group_of(vit.configure_optimizers())
    assert groups[id(vit.backbone.pos_embed)]["weight_decay"] == 0.0
    assert groups[id(vit.backbone.cls_token)]["weight_decay"] == 0.0
    assert groups[id(vit.backbone.patch_embed.proj.weight)]["weight_decay"] == 0.05
    assert groups[id(vit.backbone.patch_embed.proj.bias)]["weight_decay"] == 0.0
    assert groups[id(vit.head.fc.weight)]["weight_decay"] == 0.05
    assert len(groups) == len(list(vit.parameters()))


# ------------------------------------------------------------- unknown names

ACCEPTED = (
    r"Accepted names: adamw, adam, sgd, rmsprop, adagrad, adamp, sgdp, adabelief, radam, lamb, lars, madgrad, novograd"
)


def test_unknown_optimizer_name_lists_the_accepted_names():
    with pytest.raises(ValueError, match=r"Unknown optimizer 'adamz' for argument `optimizer`") as info:
        create_optimizer(_mlp(), "adamz")
    message = str(info.value)
    assert "Did you mean 'adam" in message
    assert ACCEPTED.replace("\\", "") in message
    assert '{"class": "dotted.path.Class", "params": {...}}' in message


def test_image_classifier_rejects_an_unknown_optimizer_at_construction():
    with pytest.raises(ValueError, match=r"Unknown optimizer 'adam_w' for argument `optimizer`.*" + ACCEPTED):
        ImageClassifier(TINY_BACKBONE, num_classes=2, optimizer="adam_w")
    with pytest.raises(ValueError, match=r"`optimizer_kwargs` must be a dict or None, got \['eps'\]"):
        ImageClassifier(TINY_BACKBONE, num_classes=2, optimizer_kwargs=["eps"])


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_adam_and_sgd_use_the_fused_kernel_and_step_as_the_foreach_path_does(name):
    fused_model, foreach_model = _mlp(), _mlp()
    fused = create_optimizer(fused_model, name, lr=0.05)
    foreach = create_optimizer(foreach_model, name, lr=0.05, optimizer_kwargs={"foreach": True})
    assert fused.defaults["fused"] is True and not foreach.defaults.get("fused")
    x, y = _separable_data()
    for model, optimizer in ((fused_model, fused), (foreach_model, foreach)):
        for _ in range(5):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    for a, b in zip(fused_model.parameters(), foreach_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # Asked for explicitly, a choice of kernel is the user's: fused=False stays off.
    assert create_optimizer(_mlp(), name, optimizer_kwargs={"fused": False}).defaults["fused"] is False


def test_parameters_the_fused_kernel_cannot_take_keep_the_default_path():
    from autotimm.optim.optimizers import _can_fuse

    model = _mlp()
    assert _can_fuse(model.parameters())
    assert not _can_fuse([])
    assert not _can_fuse([nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False)])
    assert create_optimizer(_mlp().double(), "adamw").defaults["fused"] is True  # float64 is floating too
    assert create_optimizer(_mlp(), "rmsprop").defaults.get("fused") is None  # no fused kernel: untouched
