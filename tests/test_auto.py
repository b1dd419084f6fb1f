"""auto_fit: the budget rule, the callbacks, the ensemble, a tiny-budget search on digits, the command line."""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import json
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml
from conftest import make_trainer
from PIL import Image

from autotimm import BackboneConfig, ImageClassifier, ImageDataModule, evaluate
from autotimm.auto import EnsembleClassifier, OptunaPruning, TimeLimit, auto_fit, list_presets, parse_time_limit
from autotimm.auto.finish import CALIBRATED_SAFETY, FINAL_SAFETY, final_safety
from autotimm.auto.presets import PRESETS, choose_batch_size, choose_image_size, get_preset, plan_search
from autotimm.auto.search import import_optuna
from autotimm.auto.timing import TimeModel
from autotimm.cli import main
from autotimm.evaluation.labelled_data import resolve_labelled_data

optuna = pytest.importorskip("optuna")

LIMIT = 45.0  # seconds of the digits search


# ------------------------------------------------------------------ budget and presets
@pytest.mark.parametrize(
    ("value", "seconds"),
    [(90, 90.0), (1.5, 1.5), ("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1h", 3600.0), ("1h30m", 5400.0),
     ("2m30s", 150.0), ("1.5h", 5400.0), (" 10 m ", 600.0), (datetime.timedelta(minutes=2), 120.0)],
)  # fmt: skip
def test_parse_time_limit(value, seconds):
    assert parse_time_limit(value) == seconds


@pytest.mark.parametrize("value", ["", "abc", "10x", "m", "-5", 0, -1, True, None, [10], "1h-30m"])
def test_parse_time_limit_rejects(value):
    with pytest.raises(ValueError, match=r"`time_limit` must be .*'90s', '10m', '1h' or '1h30m'"):
        parse_time_limit(value)


def test_unknown_preset_lists_the_presets():
    assert list_presets() == ["fast", "balanced", "best"]
    with pytest.raises(ValueError, match=r"`preset` must be one of \['fast', 'balanced', 'best'\], got 'quick'"):
        get_preset("quick")


def test_sizes_follow_the_images():
    fast = PRESETS["fast"]
    assert choose_image_size(8, fast) == 32  # 8x8 digits are enlarged
    assert choose_image_size(28, fast) == 28  # Fashion-MNIST stays native
    assert choose_image_size(500, fast) == fast.max_image_size
    assert fast.candidates(28) == fast.small_image_backbones and fast.candidates(128) == fast.backbones
    assert choose_batch_size(48_000, 28) == 512 and choose_batch_size(48_000, 64) == 256
    assert choose_batch_size(48_000, 224) == 64
    assert choose_batch_size(100, 32) == 16


def test_small_images_from_scratch_get_the_sgd_recipe():
    fast = PRESETS["fast"]
    small = fast.space_for(28)
    assert small.recipe.optimizer == "sgd" and small.recipe.scheduler == "onecycle" and small.recipe.cpu_bf16
    assert small.augmentation_choices(28)[0] == "crop_flip" and small.lr[0] <= small.recipe.lr <= small.lr[1]
    assert fast.space_for(28, pretrained=True) is fast.space and fast.space_for(128) is fast.space
    assert fast.space.recipe.optimizer == "adamw" and PRESETS["best"].space_for(28) is PRESETS["best"].space
    kwargs = small.recipe.model_kwargs()
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3, lr=0.2, **kwargs)
    assert model.hparams.optimizer == "sgd" and model.hparams.optimizer_kwargs == {"nesterov": True}


def test_final_training_fills_more_of_the_time_once_calibrated():
    model = TimeModel({"a": 0.1}, 32, 0.0, 0.0, 0, 1)
    assert final_safety(model) == FINAL_SAFETY
    model.ratios = [0.9, 1.0, 1.05]
    assert final_safety(model) == CALIBRATED_SAFETY > FINAL_SAFETY
    model.ratios = [0.6, 1.0, 1.05]  # a noisy machine
    assert final_safety(model) == FINAL_SAFETY


@pytest.mark.parametrize(
    ("scores", "kept"),
    [
        ({"none": 0.80, "flip": 0.85, "flip_crops": 0.84}, "flip"),
        ({"none": 0.85, "flip": 0.80, "flip_crops": 0.85}, "none"),  # a tie with a cheaper mode keeps the cheaper
        ({"none": 0.80, "flip": 0.80, "flip_crops": 0.80}, "none"),
        ({"none": 0.80, "flip": 0.82, "flip_crops": 0.83}, "flip_crops"),
        ({"none": 0.80, "flip": 0.79, "flip_crops": 0.81}, "flip_crops"),
    ],
)
def test_a_test_time_augmentation_is_kept_only_when_it_scores_higher(scores, kept, monkeypatch):
    import types

    import autotimm.auto.finish as finish

    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3)
    monkeypatch.setattr(finish, "_val_score", lambda state, m: scores[m.default_tta])
    state = types.SimpleNamespace(
        tta=True,
        search_tables={"val": list(range(10))},
        time_model=TimeModel({"test_resnet": 0.01}, 32, 0.0, 0.0, 0, 1),
        start=time.monotonic(),
        limit=60.0,
        reserve=2.0,
        settings=types.SimpleNamespace(mode="max"),
    )
    final = finish.FinalTraining(ran=True, note="", used=True, trained_on="train")
    info = finish._choose_tta(state, model, final, "test_resnet")
    assert (info["plain"], info["flip"], info["flip_crops"]) == (scores["none"], scores["flip"], scores["flip_crops"])
    assert info["mode"] == kept and info["used"] is (kept != "none") and model.default_tta == kept
    assert f"TTA {kept} kept on 10 images" in info["note"]
    refit = finish._choose_tta(state, model, replace(final, trained_on="train+val"), "test_resnet")
    assert not refit["used"] and "trained on the validation images" in refit["note"]
    state.tta = False
    not_run = finish.FinalTraining(ran=False, note="")
    assert "not tried" in finish._choose_tta(state, model, not_run, "test_resnet")["note"]


def test_final_training_summary_keeps_only_what_applies():
    from autotimm.auto.finish import FinalTraining

    assert FinalTraining(ran=False, note="skipped").to_dict() == {"ran": False, "note": "skipped"}
    assert FinalTraining(ran=True, note="failed").to_dict() == {"ran": True, "used": False, "note": "failed"}
    trained = FinalTraining(ran=True, note="ok", used=True, trained_on="train+val", images=9, epochs=2, score=None)
    summary = trained.to_dict()
    assert summary["trained_on"] == "train+val" and summary["score"] is None and summary["checkpoint"] is None
    keys = ["ran", "trained_on", "images", "epochs", "safety", "max_epochs", "seconds", "score", "used", "note"]
    assert list(summary) == [*keys, "checkpoint"]  # the order summary.json has always had
    assert trained.trained_on_val and not replace(trained, used=False).trained_on_val


def test_plan_keeps_the_candidates_that_fit_a_slice():
    preset = PRESETS["fast"]  # 6 slices, 2 epochs at least
    times = {"small": 2.0, "mid": 5.0, "big": 20.0}
    plan = plan_search(times, search_seconds=60.0, preset=preset)
    assert plan.slice_seconds == pytest.approx(10.0)
    assert plan.kept == ["small", "mid"] and set(plan.dropped) == {"big"}
    assert "2 epochs take ~40s" in plan.dropped["big"]
    assert plan_search(times, 60.0, preset, n_trials=1).kept == ["small", "mid", "big"]  # fewer, longer slices
    assert plan_search(times, 60.0, preset, trial_overhead=1.0).kept == ["small"]  # 2 * 5 + 1 > 10


def test_plan_falls_back_to_the_fastest():
    preset = PRESETS["fast"]
    plan = plan_search({"a": 30.0, "b": 50.0}, search_seconds=90.0, preset=preset, trial_overhead=1.0)
    assert plan.kept == ["a"] and plan.slice_seconds == pytest.approx(61.0)  # one long trial instead of six
    plan = plan_search({"a": 30.0}, search_seconds=40.0, preset=preset)
    assert plan.kept == ["a"] and plan.slice_seconds == pytest.approx(40.0)  # as long as the whole search
    with pytest.raises(ValueError, match="no candidate"):
        plan_search({}, 10.0, preset)


def test_plan_skips_a_search_too_short_for_two_trials():
    preset = PRESETS["fast"]  # before a final training on all the data, a one-trial search is a waste
    plan = plan_search({"a": 30.0, "b": 40.0}, 100.0, preset, can_skip=True)
    assert plan.kept == [] and "two trials of the fastest candidate, a, need ~120s" in plan.skipped
    plan = plan_search({"a": 30.0}, 130.0, preset, can_skip=True)
    assert plan.kept == ["a"] and not plan.skipped and plan.slice_seconds == pytest.approx(60.0)


def test_time_model_learns_from_trials():
    model = TimeModel({"net": 0.1}, batch_size=10, load_train=0.001, load_eval=0.001)
    epoch = model.epoch_seconds("net", num_train=100, num_val=50)
    assert epoch == pytest.approx(10 * (0.1 + 0.01) + 5 * (0.1 / 3 + 0.01))
    assert model.epochs_within("net", 1.0 + 3.5 * epoch, 100, 50) == 3
    model.observe("net", 100, 50, epoch_seconds=[2 * epoch] * 2, seconds=3.0 + 4 * epoch)  # twice as slow
    assert model.factor == pytest.approx(2.0) and model.overhead == pytest.approx(3.0)
    assert model.epoch_seconds("net", 100, 50) == pytest.approx(2 * epoch)
    assert model.epochs_within("net", 3.0 + 4 * epoch, 100, 50) == 2
    probed = TimeModel({"net": 0.1}, batch_size=10, load_train=0.001, load_eval=0.001)
    probed.observe_batches("net", 0.055)  # batches take half the estimate (0.1 + 10 * 0.001)
    assert probed.factor == pytest.approx(0.5) and probed.overhead == 1.0
    ddp = TimeModel({"net": 0.1}, batch_size=10, load_train=0.001, load_eval=0.001, world_size=2)
    assert ddp.epoch_seconds("net", 100, 50) < 0.6 * epoch


def test_tables_merge_and_subset(tmp_path):
    from autotimm.auto.data import merge_tables, native_image_shape, subset_table
    from autotimm.data.sources import SampleTable

    first = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8)
    second = np.full((2, 8, 8), 7, np.uint8)
    merged = merge_tables(SampleTable([1, 3], [0, 1], array=first), SampleTable([0], [1], array=second))
    assert merged.targets == [0, 1, 1] and len(merged) == 3
    np.testing.assert_array_equal(merged.array[merged.items], np.stack([first[1], first[3], second[0]]))
    shared = merge_tables(SampleTable([1], [0], array=first), SampleTable([2], [1], array=first))
    assert shared.array is first and shared.items == [1, 2]
    assert native_image_shape(SampleTable([0], [0], array=first)) == (8, 1)
    table = SampleTable(list(range(100)), [i % 2 for i in range(100)], array=np.zeros((100, 4, 4), np.uint8))
    part = subset_table(table, 10, seed=0)
    assert len(part) == 10 and sorted(part.targets) == [0] * 5 + [1] * 5  # stratified
    assert subset_table(table, 500, seed=0) is table
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    Image.new("L", (20, 10)).save(tmp_path / "a" / "x.png")
    Image.new("RGB", (30, 12)).save(tmp_path / "b" / "y.png")
    folders = merge_tables(
        SampleTable(["x.png"], [0], root=tmp_path / "a"), SampleTable(["y.png"], [1], root=tmp_path / "b")
    )
    assert [folders.path(i).name for i in range(2)] == ["x.png", "y.png"] and native_image_shape(folders) == (25, 3)


def test_missing_optuna_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ImportError, match=r"pip install 'autotimm\[auto\]'"):
        import_optuna()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"preset": "huge"}, "`preset` must be one of"), ({"time_limit": "soon"}, "`time_limit` must be"),
     ({"ensemble": -1}, "`ensemble` must be an int >= 0, got -1"), ({"refit": "yes"}, "`refit` must be True or False"),
     ({"n_trials": 0}, "`n_trials` must be an int >= 1 or None"), ({"search_fraction": 1.5}, "`search_fraction`"),
     ({"backbones": ["resnet_unknown"]}, "Unknown backbone 'resnet_unknown'"),
     ({"trainer_kwargs": {"max_epochs": 3}}, r"must not set \['max_epochs'\]"),
     ({"metric": "auroc"}, r"`metric` must be one of \['accuracy', 'f1_macro', 'loss', 'top5_accuracy'\]")],
)  # fmt: skip
def test_bad_arguments_are_named(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        auto_fit("digits", **{"time_limit": 30, **kwargs, "output_dir": tmp_path})


def test_pretrained_weights_offline_give_the_backbone_error(tmp_path):
    from autotimm import PretrainedWeightsUnavailableError

    with pytest.raises(PretrainedWeightsUnavailableError, match="resnet10t"):
        auto_fit("digits", 30, output_dir=tmp_path, backbones=["resnet10t"], pretrained=True, verbose=False)


def test_data_without_validation_split_is_refused(tmp_path):
    data = ImageDataModule(dataset="digits", val_split=0.0, output_dir=None)
    with pytest.raises(ValueError, match=r"no validation split.*val_split"):
        auto_fit(data, 30, output_dir=tmp_path)


# ------------------------------------------------------------------ callbacks
def _tiny_model() -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=4, lr=1e-2)


def test_pruning_callback_stops_a_pruned_trial(train_loader, val_loader, single_thread):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    trial = study.ask()  # any accuracy is below 2: pruned at the first report
    pruning = OptunaPruning(trial, "val/accuracy", max_epochs=4)
    trainer = make_trainer(max_epochs=4, callbacks=[pruning])
    trainer.fit(_tiny_model(), train_loader, val_loader)
    assert pruning.pruned and trainer.current_epoch == 1 and len(pruning.history) == 1
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {3: pruning.history[0]}  # 1/4 -> step 3


def test_pruning_callback_never_prunes_the_last_epoch(train_loader, val_loader, single_thread):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    pruning = OptunaPruning(study.ask(), "val/accuracy", max_epochs=1)
    make_trainer(max_epochs=1, callbacks=[pruning]).fit(_tiny_model(), train_loader, val_loader)
    assert not pruning.pruned and len(pruning.history) == 1


def test_time_limit_stops_at_the_deadline(train_loader, single_thread):
    limit = TimeLimit(deadline=time.monotonic())
    trainer = make_trainer(max_epochs=5, callbacks=[limit], limit_val_batches=0)
    trainer.fit(_tiny_model(), train_loader)
    assert limit.stopped and trainer.global_step == 1 and limit.epochs_done == 0


def test_time_limit_skips_an_epoch_that_would_end_late(train_loader, single_thread):
    limit = TimeLimit(deadline=time.monotonic() + 3600)
    trainer = make_trainer(max_epochs=5, callbacks=[limit], limit_val_batches=0)
    trainer.fit(_tiny_model(), train_loader)
    assert not limit.stopped and limit.epochs_done == 5
    limit = TimeLimit(deadline=time.monotonic() + 30)
    limit.epoch_seconds = [100.0]  # pretend epochs take ~50 s on average: the first epoch's end stops training
    trainer = make_trainer(max_epochs=5, callbacks=[limit], limit_val_batches=0)
    trainer.fit(_tiny_model(), train_loader)
    assert limit.stopped and limit.epochs_done == 1 and trainer.current_epoch == 1


# ------------------------------------------------------------------ ensemble
def _member(seed: int, mean: float, std: float) -> ImageClassifier:
    torch.manual_seed(seed)
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3, class_names=["a", "b", "c"])
    config = {"input_size": [3, 16, 16], "mean": [mean] * 3, "std": [std] * 3, "interpolation": "bilinear",
              "crop_pct": 1.0, "crop_mode": "center"}  # fmt: skip
    model.apply_data_info(["a", "b", "c"], config)
    return model.eval()


def test_ensemble_averages_probabilities_with_each_members_normalisation(tmp_path):
    members = [_member(0, 0.5, 0.25), _member(1, 0.2, 0.6)]
    ensemble = EnsembleClassifier(members, weights=[3, 1]).eval()
    raw = torch.rand(4, 3, 16, 16)  # images in [0, 1], before normalisation
    with torch.no_grad():
        out = ensemble((raw - 0.5) / 0.25)  # normalised as member 0 (the ensemble's data_config)
        expected = 0.75 * members[0]((raw - 0.5) / 0.25).softmax(1) + 0.25 * members[1]((raw - 0.2) / 0.6).softmax(1)
    torch.testing.assert_close(out.softmax(1), expected, atol=1e-6, rtol=1e-5)
    # predict, evaluate and a save/load round trip all use the averaged probabilities
    images, labels = (raw.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8), np.array([0, 1, 2, 0])
    predictions = ensemble.predict(images, top_k=3)
    assert [p.labels[0] for p in predictions] == [
        ["a", "b", "c"][i] for i in ensemble.predict_logits(images)[0].argmax(1)
    ]
    report = evaluate(ensemble, (images, labels), tmp_path / "report", verbose=False, num_wrong=0)
    assert report.num_images == 4 and (tmp_path / "report" / "metrics.json").is_file()
    loaded = EnsembleClassifier.load(ensemble.save(tmp_path / "ensemble"))
    np.testing.assert_allclose(loaded.predict_logits(images)[0], ensemble.predict_logits(images)[0], atol=1e-5)


def test_ensemble_refuses_members_that_do_not_fit():
    member = _member(0, 0.5, 0.25)
    other = _member(1, 0.5, 0.25)
    other.apply_data_info(["a", "b", "c"], {**other.data_config, "input_size": [3, 32, 32]})
    with pytest.raises(ValueError, match=r"`members`\[1\] expects input_size=\[3, 32, 32\]"):
        EnsembleClassifier([member, other])
    renamed = _member(1, 0.5, 0.25)
    renamed.apply_data_info(["x", "b", "c"], renamed.data_config)
    with pytest.raises(ValueError, match=r"`members`\[1\] has class names"):
        EnsembleClassifier([member, renamed])
    with pytest.raises(ValueError, match="`weights` must be 2 positive numbers"):
        EnsembleClassifier([member, member], weights=[1, 0])
    with pytest.raises(FileNotFoundError, match=r"ensemble\.json"):
        EnsembleClassifier.load("/nonexistent")


# ------------------------------------------------------------------ a real search on digits
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("auto")
    data = ImageDataModule(dataset="digits", val_split=0.2, test_split=0.1, seed=0, output_dir=out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared 2-core machine: two threads per process are slower than one
    try:
        start = time.monotonic()
        result = auto_fit(data, time_limit=LIMIT, output_dir=out, refit=True, ensemble=2, seed=0, verbose=False)
        elapsed = time.monotonic() - start
    finally:
        torch.set_num_threads(threads)
    return {"result": result, "elapsed": elapsed, "data": data, "out": out}


def test_digits_search_ends_inside_its_limit(digits_run):
    assert digits_run["elapsed"] <= LIMIT * 1.15 + 5
    assert digits_run["result"].time_used <= digits_run["elapsed"]


def test_digits_search_writes_trials_summary_and_checkpoint(digits_run):
    result, out = digits_run["result"], digits_run["out"]
    with open(out / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(result.trials) >= 1
    assert {"number", "state", "backbone", "lr", "weight_decay", "score", "epochs", "seconds"} <= set(rows[0])
    assert any(row["state"] == "complete" and float(row["score"]) > 0.5 for row in rows)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("best_config", "best_score", "time_used", "time_limit", "checkpoint", "candidates", "final"):
        assert key in summary
    assert summary["time_limit"] == LIMIT and summary["time_used"] <= LIMIT * 1.15 + 5
    assert summary["best_config"]["backbone"] in PRESETS["fast"].small_image_backbones
    assert summary["best_config"]["optimizer"] == "sgd" and summary["recipe"]["scheduler"] == "onecycle"
    final = summary["final"]
    if final.get("used") and final.get("trained_on") == "train+val":  # refit=True: no held-out images left for TTA
        assert "trained on the validation images" in summary["tta"]["note"]
    else:  # the refit did not fit into what was left of the budget (a busy machine): TTA is judged on val
        assert "trained on the validation images" not in summary["tta"]["note"] and final["note"]
    assert summary == json.loads(json.dumps(result.summary(), default=str))
    model = ImageClassifier.load(out / "best.ckpt")
    assert model.class_names == [str(i) for i in range(10)] and model.data_config["input_size"] == [1, 32, 32]


def test_digits_models_predict_well_above_chance(digits_run):
    result, data = digits_run["result"], digits_run["data"]
    sources, labels = resolve_labelled_data(data, result.model.class_names, split="test")
    single = ImageClassifier.load(result.checkpoint)
    accuracy = np.mean([p.indices[0] for p in single.predict(sources, top_k=1)] == labels)
    assert accuracy > 0.5  # ten classes: chance is 0.1
    if isinstance(result.model, EnsembleClassifier):  # two trials finished: the ensemble is the model
        logits = result.model.predict_logits(sources)[0]
        assert np.mean(logits.argmax(1) == labels) > 0.5
        loaded = EnsembleClassifier.load(result.ensemble_dir)
        np.testing.assert_allclose(loaded.predict_logits(sources[:8])[0], logits[:8], atol=1e-5)
    else:
        assert "only 1 trial finished" in result.summary()["ensemble"]["note"]


def test_failed_trials_are_recorded_and_all_failing_is_a_clear_error(tmp_path, monkeypatch, single_thread):
    import autotimm.auto.trials as trials

    build = trials._build

    def first_runs_out_of_memory(spec, settings):
        if spec.number == 0:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return build(spec, settings)

    monkeypatch.setattr(trials, "_build", first_runs_out_of_memory)
    options = dict(n_trials=2, backbones=["test_resnet"], image_size=16, verbose=False)
    result = auto_fit("digits", 25, output_dir=tmp_path / "mixed", **options)
    assert [row["state"] for row in result.trials] == ["failed", "complete"]
    assert result.trials[0]["note"].startswith("RuntimeError: CUDA out of memory") and result.best_score > 0.1
    with open(tmp_path / "mixed" / "trials.csv") as handle:
        assert [row["state"] for row in csv.DictReader(handle)] == ["failed", "complete"]

    monkeypatch.setattr(trials, "_build", lambda spec, settings: first_runs_out_of_memory(replace(spec, number=0), 0))
    with pytest.raises(RuntimeError, match=r"none of the 2 trials.*RuntimeError: CUDA out of memory"):
        auto_fit("digits", 20, output_dir=tmp_path / "failed", **options)


def test_a_search_too_short_is_skipped_and_the_final_training_gets_the_budget(tmp_path, single_thread):
    # float32: the logged score and the re-scoring (as predict runs the model) then agree exactly;
    # under a bf16 autocast they can differ by an image, and best_score is the re-scored one.
    options = dict(backbones=["test_resnet"], image_size=16, search_fraction=0.02, verbose=False)
    result = auto_fit("digits", 15, output_dir=tmp_path, trainer_kwargs={"precision": "32-true"}, **options)
    summary = result.summary()
    assert result.trials == [] and "two trials of the fastest candidate" in summary["search_skipped"]
    assert summary["probe"]["images"] > 0 and summary["probe"]["factor"] != 1.0  # the probe measured the speed
    assert summary["final"]["used"] and summary["final"]["trained_on"] == "train"
    tta = summary["tta"]  # flip TTA is kept only when it scores higher on the same validation images
    assert summary["final"]["score"] > 0.2
    if "plain" in tta:  # scored both ways; on a busy machine the time check may skip it, and says so
        assert tta["plain"] == pytest.approx(summary["final"]["score"], abs=1e-6)
        assert result.best_score == tta[tta["mode"] if tta["used"] else "plain"]
    else:
        assert tta["note"].startswith("not tried: scoring it needs") and not tta["used"]
        assert result.best_score == pytest.approx(summary["final"]["score"], abs=1e-6)
    assert result.model.default_tta == tta["mode"] and tta["used"] == (tta["mode"] != "none")
    assert result.time_used <= 15 * 1.15 + 5 and (tmp_path / "best.ckpt").is_file()


# ------------------------------------------------------------------ command line
def _run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def test_cli_print_config_and_errors():
    code, out, _ = _run(["auto", "--data", "digits", "--time_limit", "2m", "--print_config"])
    assert code == 0 and yaml.safe_load(out)["time_limit"] == "2m"
    code, _, err = _run(["auto", "--data", "digits", "--time-limit", "soon"])
    assert code == 2 and err.count("\n") == 1 and "--time-limit must be" in err and "'1h30m'" in err
    code, _, err = _run(["auto", "--data", "digits", "--preset", "huge"])
    assert code == 1 and "--preset must be one of ['fast', 'balanced', 'best'], got 'huge'" in err
    code, _, err = _run(["auto", "--data", "no/such/folder"])
    assert code == 1 and "not an existing folder" in err
    code, _, err = _run(["auto", "--data", "digits", "--metric", "auroc"])
    assert code == 1 and "--metric must be one of accuracy, f1_macro, top5_accuracy, loss; got 'auroc'" in err
    code, _, err = _run(["auto", "--data", "digits", "--ensemble", "-2"])
    assert code == 2 and "--ensemble must be an integer >= 0" in err


def test_cli_runs_a_search(tmp_path, single_thread):
    out = tmp_path / "run"
    args = ["auto", "--data", "digits", "--time-limit", "15s", "--n-trials", "1", "--backbones", "test_resnet"]
    code, stdout, err = _run([*args, "--image-size", "16", "--output-dir", str(out)])
    assert code == 0, err
    assert "auto_fit trials" in stdout and "best val accuracy" in stdout and "autotimm evaluate" in stdout
    assert (out / "best.ckpt").is_file() and (out / "trials.csv").is_file() and (out / "config.yaml").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["backbones"] == "test_resnet"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_trials"] == 1 and summary["best_config"]["backbone"] == "test_resnet"
