"""The training controls under MirroredStrategy over two logical CPU devices.

Every run of this module trains in ONE subprocess (the logical devices must
be set up before TensorFlow starts; ``_controls_worker.py``), next to a
single-device run of the same settings; the tests read what those runs
wrote.
"""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from catdog import callbacks as callbacks_lib
from catdog import config as C
from catdog import data
from catdog import models
from helpers import REPO, make_class_folder

pytestmark = pytest.mark.slow  # one subprocess trains all runs (~1-2 min)

WORKER = os.path.join(REPO, "tests", "_controls_worker.py")
STEPS = 4  # 32 training images in global batches of 8, on one device or two
COSINE = {"lr_schedule": "cosine", "warmup_epochs": 1.0, "epochs": 3}


def _runs(two, four, out):
    base = {"train_dir": two[0], "val_dir": two[1]}
    mirrored = {"strategy": "mirrored"}
    return {
        "cosine_one_device": {**base, "train": {**COSINE, "strategy": "default"}},
        "cosine": {**base, "train": {**COSINE, **mirrored}},
        "adamw": {**base, "train": {
            **COSINE, **mirrored, "optimizer": "adamw", "weight_decay": 0.01}},
        "steps_per_execution": {**base, "train": {
            **COSINE, **mirrored, "steps_per_execution": 3}},
        "plateau": {**base, "train": {
            **mirrored, "lr_schedule": "plateau", "lr_plateau_patience": 1,
            "lr_decay_factor": 0.5, "monitor": "val_loss", "learning_rate": 0.01,
            "epochs": 3}},
        "early_first": {**base, "model_dir": os.path.join(out, "early"), "train": {
            **mirrored, "monitor": "val_loss", "early_stopping_patience": 2, "epochs": 1}},
        # A best no epoch can beat: the resumed run stops after two more epochs.
        "early": {**base, "model_dir": os.path.join(out, "early"), "train": {
            **mirrored, "monitor": "val_loss", "early_stopping_patience": 2, "epochs": 30},
            "backup_state": {"early_stopping": {"best": 0.0, "wait": 0}}},
        "sgd_top_k": {"train_dir": four[0], "val_dir": four[1], "train": {
            **mirrored, "optimizer": "sgd", "momentum": 0.9, "learning_rate": 0.01,
            "top_k": 2, "monitor": "val_top_k_accuracy", "epochs": 1}},
        "find_lr": {**base, "train": mirrored,
                    "find_lr": {"min_lr": 1e-5, "max_lr": 10.0, "steps": 12}},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{name: (model_dir, result)}`` of every run of :func:`_runs`."""
    root = tmp_path_factory.mktemp("controls")
    two = (make_class_folder(root / "train", per_class=16, seed=1),
           make_class_folder(root / "valid", per_class=6, seed=2))
    classes = ("a", "b", "c", "d")
    four = (make_class_folder(root / "train4", classes=classes, per_class=8, seed=1),
            make_class_folder(root / "valid4", classes=classes, per_class=3, seed=2))
    specs = _runs(two, four, str(root))
    for name, spec in specs.items():
        spec.setdefault("model_dir", str(root / name))
    (root / "spec.json").write_text(json.dumps(
        {"logical_cpus": 2, "runs": list(specs.values())}))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, WORKER, str(root / "spec.json"),
                           str(root / "results.json")],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((root / "results.json").read_text())
    return {name: (spec["model_dir"], result)
            for (name, spec), result in zip(specs.items(), results)}, two, four


def _trained(runs, name):
    model_dir, result = runs[0][name]
    assert result["error"] is None, result["error"]
    return model_dir, result["metrics"]


def _rows(model_dir):
    with open(os.path.join(model_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


def _column(model_dir, key="learning_rate"):
    return [float(r[key]) for r in _rows(model_dir)]


def _evaluate(model_dir, folders, num_classes=2, top_k=0):
    """model.keras over the whole validation folder, on one device."""
    c = C.for_stage("baseline")
    c.data.train_dir, c.data.val_dir = folders
    c.data.image_size, c.data.batch_size = (24, 24), 8
    index = data.index_source(c.data, progress=False)
    _, val_ds, _ = data.build_datasets(c.data, index)
    model = models.load_model(model_dir)
    models.compile_model(model, num_classes, 1e-3, top_k=top_k)
    return model.evaluate(val_ds, verbose=0, return_dict=True)


def _cosine(step, base=1e-3, warmup=STEPS, total=3 * STEPS):
    if step < warmup:
        return base * step / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_cosine_with_warmup_has_the_single_device_learning_rate_column(runs):
    one_dir, one = _trained(runs, "cosine_one_device")
    two_dir, two = _trained(runs, "cosine")
    assert (one["replicas"], two["replicas"]) == (1, 2)
    assert two["strategy"] == "MirroredStrategy"
    expected = [_cosine((e + 1) * STEPS - 1) for e in range(3)]
    np.testing.assert_allclose(_column(one_dir), expected, rtol=1e-5)
    assert _column(two_dir) == _column(one_dir)


def test_adamw_trains_under_the_strategy(runs):
    model_dir, metrics = _trained(runs, "adamw")
    assert metrics["replicas"] == 2 and metrics["epochs_completed"] == 3
    record = json.loads(open(os.path.join(model_dir, "config.json")).read())
    assert (record["train"]["optimizer"], record["train"]["weight_decay"]) == ("adamw", 0.01)
    np.testing.assert_allclose(_column(model_dir),
                               [_cosine((e + 1) * STEPS - 1) for e in range(3)], rtol=1e-5)
    assert all(math.isfinite(v) for v in _column(model_dir, "loss"))


def test_several_steps_per_execution_over_two_replicas_is_a_usage_error(runs):
    """Keras' loop of several steps per call fails over several replicas; the
    run is refused before anything is built or written, naming the flag."""
    model_dir, result = runs[0]["steps_per_execution"]
    assert result["error"].startswith("ValueError: "), result["error"][-2000:]
    assert "--steps_per_execution=3" in result["error"]
    assert "2 replicas" in result["error"] and "--steps_per_execution=1" in result["error"]
    assert not os.path.exists(os.path.join(model_dir, "config.json"))
    assert not os.path.exists(os.path.join(model_dir, "history.csv"))


def _plateau(losses, first, factor, patience=1):
    """What --lr_schedule=plateau does, epoch by epoch: (rates, final wait).

    Keras' rule: an epoch without improvement adds 1 to the wait; at
    ``patience`` the rate drops and the wait starts again from 0.
    """
    rates, best, wait = [first], None, 0
    for loss in losses:
        if best is None or loss < best:
            best, wait = loss, 0
        else:
            wait += 1
        rate = rates[-1]
        if wait >= patience:
            rate, wait = rate * factor, 0
        rates.append(rate)
    return rates[:-1], wait


def test_plateau_lowers_the_rate_after_patience_and_backs_up_its_counters(runs):
    model_dir, metrics = _trained(runs, "plateau")
    assert metrics["replicas"] == 2
    losses = _column(model_dir, "val_loss")
    rates, wait = _plateau(losses, 0.01, 0.5)
    np.testing.assert_allclose(_column(model_dir), rates, rtol=1e-6)
    state = callbacks_lib.read_backup_metadata(os.path.join(model_dir, "backup"))[
        "callbacks"]["reduce_lr_on_plateau"]
    assert state["best"] == pytest.approx(min(losses))
    assert state["wait"] == wait


def test_early_stopping_on_val_loss_stops_says_why_and_keeps_the_best_model(runs):
    model_dir, metrics = _trained(runs, "early")
    assert metrics["replicas"] == 2
    losses = _column(model_dir, "val_loss")
    assert len(losses) == 3  # the first attempt's epoch, then patience 2
    saved = json.loads(open(os.path.join(model_dir, "metrics.json")).read())
    assert saved["stopped"] == ("early stopping: val_loss did not improve for 2 epochs "
                                "after epoch 1")
    best = int(np.argmin(losses))
    assert saved["best_epoch"] == best + 1
    # model.keras is the best epoch's model, and the logged val_loss is the
    # loss over every validation image (as one device computes it).
    full = _evaluate(model_dir, runs[1])
    assert full["loss"] == pytest.approx(losses[best], rel=1e-4)


def test_sgd_and_top_k_accuracy_under_the_strategy(runs):
    model_dir, metrics = _trained(runs, "sgd_top_k")
    assert metrics["replicas"] == 2 and metrics["monitor"] == "val_top_k_accuracy"
    record = json.loads(open(os.path.join(model_dir, "config.json")).read())
    assert record["train"]["optimizer"] == "sgd"
    row = _rows(model_dir)[0]
    assert math.isfinite(float(row["loss"]))
    # 12 validation images over two replicas: the numbers of all of them.
    full = _evaluate(model_dir, runs[2], num_classes=4, top_k=2)
    assert float(row["val_top_k_accuracy"]) == pytest.approx(full["top_k_accuracy"])
    assert float(row["val_accuracy"]) == pytest.approx(full["accuracy"])
    assert float(row["val_top_k_accuracy"]) >= float(row["val_accuracy"])


def test_range_test_runs_under_the_strategy(runs):
    model_dir, result = _trained(runs, "find_lr")
    assert (result["strategy"], result["replicas"]) == ("MirroredStrategy", 2)
    saved = json.loads(open(os.path.join(model_dir, "lr_find.json")).read())
    assert saved["replicas"] == 2
    assert 2 < saved["steps"] <= 12 and all(math.isfinite(x) for x in saved["losses"])
