"""Training controls: schedules, plateau, monitor, early stopping, optimizers, top-k."""

import copy
import csv
import glob
import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from catdog import callbacks as callbacks_lib
from catdog import config as C
from catdog import controls
from catdog import data
from catdog import models
from catdog import resume_check
from catdog import train
from helpers import make_class_folder

STEPS = 4  # 32 training images in batches of 8


def _config(train_dir, val_dir, model_dir, epochs=4, **train_settings):
    c = C.for_stage("baseline")
    c.data.train_dir, c.data.val_dir = train_dir, val_dir
    c.data.image_size, c.data.batch_size = (32, 32), 8
    c.train.epochs, c.train.model_dir, c.train.verbose = epochs, str(model_dir), 0
    for key, value in train_settings.items():
        setattr(c.train, key, value)
    return c


def _rows(model_dir):
    with open(os.path.join(model_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


def _column(model_dir, key="learning_rate"):
    return [float(r[key]) for r in _rows(model_dir)]


def _cosine(step, base, warmup, total):
    if step < warmup:
        return base * step / warmup
    span = total - warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))


def _tensorboard_rates(model_dir):
    rates = {}
    for path in glob.glob(os.path.join(model_dir, "logs", "train", "*tfevents*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "epoch_learning_rate":
                    rates[event.step] = float(tf.make_ndarray(value.tensor))
    return [rates[k] for k in sorted(rates)]


def _stop_during(monkeypatch, epoch, step):
    """Makes the run stop as a SIGTERM does, after ``step`` of ``epoch``."""
    original = callbacks_lib.PreemptionCallback.on_train_batch_end

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch == epoch and batch == step:
            self.request("test")
        return original(self, batch, logs)

    monkeypatch.setattr(callbacks_lib.PreemptionCallback, "on_train_batch_end",
                        on_train_batch_end)


def test_cosine_with_warmup_learning_rate_column_equals_the_formula(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    run = tmp_path / "run"
    train.run(_config(train_dir, val_dir, run, epochs=4, lr_schedule="cosine",
                      warmup_epochs=1.0))
    base, total = 1e-3, 4 * STEPS
    # The rate of each epoch's last step (step (e + 1) * STEPS - 1).
    expected = [_cosine((e + 1) * STEPS - 1, base, STEPS, total) for e in range(4)]
    np.testing.assert_allclose(_column(run), expected, rtol=1e-5)
    # The TensorBoard scalar is the same number (Keras' own is the next step's).
    np.testing.assert_allclose(_tensorboard_rates(str(run)), expected, rtol=1e-5)


@pytest.mark.slow  # two runs and a resume (~20 s)
def test_a_resumed_cosine_run_continues_the_schedule_from_the_same_step(
        tiny_folders, tmp_path, monkeypatch):
    train_dir, val_dir = tiny_folders
    whole = tmp_path / "whole"
    train.run(_config(train_dir, val_dir, whole, lr_schedule="cosine", warmup_epochs=0.5))
    resumed = tmp_path / "resumed"
    config = _config(train_dir, val_dir, resumed, lr_schedule="cosine", warmup_epochs=0.5)
    with monkeypatch.context() as m:
        _stop_during(m, epoch=2, step=1)  # mid-epoch: that epoch runs again
        with pytest.raises(Exception, match="(?i)preempt|stop"):
            train.run(config)
    assert len(_rows(resumed)) == 2
    train.run(config)
    assert [r["epoch"] for r in _rows(resumed)] == ["0", "1", "2", "3"]
    np.testing.assert_allclose(_column(resumed), _column(whole), rtol=1e-6)


def test_cosine_refuses_a_resume_with_other_epochs(tiny_folders, tmp_path):
    """Cosine decays over --epochs: another value would change the schedule."""
    train_dir, val_dir = tiny_folders
    config = _config(train_dir, val_dir, tmp_path / "run", epochs=1, lr_schedule="cosine")
    train.run(config)
    config.train.epochs = 2
    with pytest.raises(ValueError, match="epochs 1 -> 2"):
        train.run(config)


def test_step_schedule_and_constant_warmup(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    train.run(_config(train_dir, val_dir, tmp_path / "step", epochs=4, lr_schedule="step",
                      lr_step_epochs=2, lr_decay_factor=0.5, warmup_epochs=0.5))
    expected = [1e-3 * 0.5 ** (((e + 1) * STEPS - 1) // (2 * STEPS)) for e in range(4)]
    np.testing.assert_allclose(_column(tmp_path / "step"), expected, rtol=1e-6)
    schedule = controls.WarmupDecay(1e-3, warmup_steps=4)
    rates = [float(schedule(s)) for s in range(6)]
    np.testing.assert_allclose(rates, [0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3], rtol=1e-6)
    # Serializable, so model.keras (which records its optimizer) can be saved and read.
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert again.get_config() == schedule.get_config()


def _plateau_rates(losses, first, factor):
    """What --lr_schedule=plateau with patience 1 does to the rate, epoch by epoch."""
    rates, best = [first], None
    for loss in losses[:-1]:
        if best is None or loss < best:
            best = loss
            rates.append(rates[-1])
        else:
            rates.append(rates[-1] * factor)
    return rates


def test_plateau_lowers_the_rate_and_its_state_survives_a_resume(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    run = tmp_path / "run"
    config = _config(train_dir, val_dir, run, epochs=2, lr_schedule="plateau",
                     lr_plateau_patience=1, lr_decay_factor=0.5, monitor="val_loss",
                     learning_rate=0.01)
    train.run(config)
    losses = _column(run, "val_loss")
    np.testing.assert_allclose(_column(run), _plateau_rates(losses, 0.01, 0.5), rtol=1e-6)
    metadata = callbacks_lib.read_backup_metadata(str(run / "backup"))
    assert metadata["callbacks"]["reduce_lr_on_plateau"]["best"] == pytest.approx(min(losses))
    # A best no epoch can beat: had the resume forgotten it, epoch 2 would be
    # an improvement and keep the rate.
    metadata["callbacks"]["reduce_lr_on_plateau"].update(best=0.0, wait=0)
    (run / "backup" / "training_metadata.json").write_text(json.dumps(metadata))
    config.train.epochs = 4
    train.run(config)
    rates = _column(run)
    assert len(rates) == 4
    assert rates[3] == pytest.approx(rates[2] * 0.5)


def test_early_stopping_stops_with_patience_and_keeps_the_best_epoch(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    run = tmp_path / "run"
    # 12 validation images: val_accuracy cannot rise strictly for 13 epochs.
    config = _config(train_dir, val_dir, run, epochs=30, early_stopping_patience=2)
    result = train.run(config)
    accs = _column(run, "val_accuracy")
    best = int(np.argmax(accs))
    assert len(accs) == best + 3 < 30  # stopped two epochs after the best
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stopped"] == (f"early stopping: val_accuracy did not improve for "
                                  f"2 epochs after epoch {best + 1}")
    assert metrics["best_epoch"] == best + 1 == result.metrics["best_epoch"]
    # model.keras is the best epoch's model.
    model = models.load_model(str(run))
    models.compile_model(model, 2, 1e-3)
    index = data.index_source(config.data, progress=False)
    _, val_ds, _ = data.build_datasets(config.data, index)
    assert model.evaluate(val_ds, verbose=0, return_dict=True)["accuracy"] == pytest.approx(
        accs[best])
    # Run again: it stays stopped, trains nothing and says why.
    again = train.run(config)
    assert len(_rows(run)) == len(accs)
    assert again.metrics["stopped"] == metrics["stopped"]


def test_early_stopping_counters_survive_a_resume(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    run = tmp_path / "run"
    config = _config(train_dir, val_dir, run, epochs=1, early_stopping_patience=2)
    train.run(config)
    metadata = callbacks_lib.read_backup_metadata(str(run / "backup"))
    assert metadata["callbacks"]["early_stopping"]["best_epoch"] == 0
    # A best no epoch can beat: the resumed run stops after two more epochs.
    metadata["callbacks"]["early_stopping"].update(best=1.0, wait=0)
    (run / "backup" / "training_metadata.json").write_text(json.dumps(metadata))
    config.train.epochs = 30
    result = train.run(config)
    assert len(_rows(run)) == 3
    assert result.metrics["stopped"] == ("early stopping: val_accuracy did not improve "
                                         "for 2 epochs after epoch 1")


def test_without_early_stopping_metrics_say_all_epochs_completed(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    result = train.run(_config(train_dir, val_dir, tmp_path / "run", epochs=1))
    assert result.metrics["stopped"] == "completed all epochs"
    assert result.metrics["monitor"] == "val_accuracy"
    # The default keeps the constant Adam rate of the presets.
    assert _column(tmp_path / "run") == [pytest.approx(1e-3)]


def test_monitor_val_loss_picks_the_lowest_loss(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    run = tmp_path / "run"
    result = train.run(_config(train_dir, val_dir, run, epochs=3, monitor="val_loss",
                               learning_rate=0.01))
    losses = _column(run, "val_loss")
    state = json.loads((run / "model.best.json").read_text())
    assert (state["monitor"], state["mode"]) == ("val_loss", "min")
    assert state["best"] == pytest.approx(min(losses))
    assert result.metrics["best_epoch"] == int(np.argmin(losses)) + 1
    assert result.metrics["best_monitor_value"] == pytest.approx(min(losses))


def test_an_unknown_monitor_is_refused_before_training_listing_the_valid_ones(
        tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    run = tmp_path / "run"
    with pytest.raises(ValueError) as e:
        train.run(_config(train_dir, val_dir, run, monitor="val_top_k_accuracy"))
    msg = str(e.value)
    assert "--monitor" in msg and "val_top_k_accuracy" in msg
    assert "val_loss" in msg and "val_auc" in msg
    assert not (run / "history.csv").exists() and not (run / "config.json").exists()


@pytest.mark.parametrize("field,value,flag", [
    ("monitor", "accuracy", "monitor"), ("early_stopping_patience", -1, "early_stopping"),
    ("lr_schedule", "linear", "lr_schedule"), ("warmup_epochs", -1.0, "warmup_epochs"),
    ("optimizer", "rmsprop", "optimizer"), ("momentum", 1.0, "momentum"),
    ("weight_decay", -0.1, "weight_decay"), ("top_k", -1, "top_k"),
    ("steps_per_execution", 0, "steps_per_execution"), ("lr_decay_factor", 1.0, "lr_decay"),
    ("lr_step_epochs", 0, "lr_step_epochs")])
def test_bad_control_settings_name_their_flag(field, value, flag):
    c = C.baseline()
    c.train.model_dir = "/tmp/x"
    setattr(c.train, field, value)
    with pytest.raises(ValueError, match=f"--{flag}"):
        c.validate()


def test_plateau_refuses_a_warmup():
    c = C.baseline()
    c.train.model_dir, c.train.lr_schedule, c.train.warmup_epochs = "/tmp/x", "plateau", 1.0
    with pytest.raises(ValueError, match="--warmup_epochs.*plateau"):
        c.validate()


def test_schedule_and_optimizer_settings_are_in_the_resume_fingerprint():
    c = C.baseline()
    defaults = resume_check.resume_settings(c)
    assert (defaults["lr_schedule"], defaults["optimizer"], defaults["monitor"]) == (
        "constant", "adam", "val_accuracy")
    assert "epochs" not in defaults and "early_stopping_patience" not in defaults
    c.train.lr_schedule, c.train.optimizer = "step", "sgd"
    settings = resume_check.resume_settings(c)
    assert {"lr_step_epochs", "lr_decay_factor", "momentum"} <= set(settings)


@pytest.mark.parametrize("name,kind", [("adam", keras.optimizers.Adam),
                                       ("adamw", keras.optimizers.AdamW),
                                       ("sgd", keras.optimizers.SGD)])
def test_training_optimizer(name, kind):
    opt = models.training_optimizer(1e-3, name, weight_decay=None, momentum=0.8)
    assert type(opt) is kind
    assert float(opt.learning_rate) == pytest.approx(1e-3)
    if name == "sgd":
        assert opt.momentum == pytest.approx(0.8)
    assert (opt.weight_decay == pytest.approx(0.004)) if name == "adamw" else not opt.weight_decay
    assert models.training_optimizer(1e-3, name, weight_decay=0.01).weight_decay == \
        pytest.approx(0.01)


def test_optimizer_and_steps_per_execution_reach_compile(tiny_folders, tmp_path, monkeypatch):
    seen = []
    original = keras.Model.compile

    def compile_spy(self, *args, **kwargs):
        seen.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "compile", compile_spy)
    train_dir, val_dir = tiny_folders
    train.run(_config(train_dir, val_dir, tmp_path / "run", epochs=1, optimizer="sgd",
                      momentum=0.5, steps_per_execution=2))
    assert isinstance(seen[0]["optimizer"], keras.optimizers.SGD)
    assert seen[0]["optimizer"].momentum == pytest.approx(0.5)
    assert seen[0]["steps_per_execution"] == 2


def test_top_k_defaults_and_checks():
    assert models.resolve_top_k(None, 2) == 0 and models.resolve_top_k(None, 5) == 0
    assert models.resolve_top_k(None, 6) == 5 and models.resolve_top_k(0, 10) == 0
    assert models.resolve_top_k(3, 4) == 3
    for k, n in ((1, 2), (4, 4)):
        with pytest.raises(ValueError, match="--top_k"):
            models.resolve_top_k(k, n)


def test_top_k_accuracy_with_more_classes(tmp_path):
    classes = ("a", "b", "c", "d")
    train_dir = make_class_folder(tmp_path / "train", classes=classes, per_class=8, seed=1)
    val_dir = make_class_folder(tmp_path / "val", classes=classes, per_class=3, seed=2)
    run = tmp_path / "run"
    result = train.run(_config(train_dir, val_dir, run, epochs=1, top_k=2,
                               monitor="val_top_k_accuracy"))
    row = _rows(run)[0]
    assert {"top_k_accuracy", "val_top_k_accuracy"} <= set(row)
    assert float(row["val_top_k_accuracy"]) >= float(row["val_accuracy"])
    assert result.metrics["monitor"] == "val_top_k_accuracy"


@pytest.mark.slow  # a stage-3 run on features (~15-30 s)
def test_fast_features_head_trains_with_the_run_optimizer_and_schedule(
        tiny_folders, tmp_path, monkeypatch):
    train_dir, val_dir = tiny_folders
    c = _config(train_dir, val_dir, tmp_path / "fast", epochs=2, lr_schedule="step",
                lr_step_epochs=1, lr_decay_factor=0.5, optimizer="sgd", learning_rate=0.01)
    c.model.stage, c.model.augment = "feature_extraction", False
    c.model.backbone, c.model.backbone_alpha, c.model.weights = "mobilenet", 0.25, "none"
    c.train.fast_features = True
    seen = []
    original = keras.Model.compile

    def compile_spy(self, *args, **kwargs):
        seen.append((self.name, kwargs.get("optimizer")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "compile", compile_spy)
    train.run(c, progress=False)
    head = [opt for name, opt in seen if name == "head"]
    assert len(head) == 1 and isinstance(head[0], keras.optimizers.SGD)
    np.testing.assert_allclose(_column(tmp_path / "fast"), [0.01, 0.005], rtol=1e-6)
