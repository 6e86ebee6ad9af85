"""--class_weight: parsing, the balanced weights, and that training uses them."""

import copy
import json
import os

from absl import flags
import keras
import numpy as np
import pytest
import tensorflow as tf

from catdog import batching
from catdog import cli
from catdog import config as C
from catdog import data
from catdog import models
from catdog import train
from helpers import make_class_folder

NAMES = ["cats", "dogs"]


def test_balanced_weights_come_from_the_training_counts():
    # sklearn's "balanced": n_samples / (n_classes * count).
    assert C.class_weights("balanced", NAMES, [30, 10]) == {"cats": 40 / 60, "dogs": 2.0}
    assert C.class_weights("balanced", ["a", "b", "c"], [10, 10, 20]) == {
        "a": 40 / 30, "b": 40 / 30, "c": 40 / 60}
    assert C.class_weights("none", NAMES, [30, 10]) is None
    assert C.class_weights(" Balanced ", NAMES, [5, 5]) == {"cats": 1.0, "dogs": 1.0}


def test_explicit_weights_are_parsed_by_class_name():
    assert C.class_weights("cats=1,dogs=3", NAMES, [30, 10]) == {"cats": 1.0, "dogs": 3.0}
    # Order as the user likes; label order in the result.
    got = C.class_weights(" dogs = 2.5 , cats=0.5 ", NAMES, None)
    assert got == {"cats": 0.5, "dogs": 2.5} and list(got) == NAMES


@pytest.mark.parametrize("value, why", [
    ("cats=1", "missing ['dogs']"),
    ("cats=1,dogs=3,birds=2", "unknown ['birds']"),
    ("cats=0,dogs=1", "positive"),
    ("cats=-1,dogs=1", "positive"),
    ("cats=x,dogs=1", "positive"),
    ("cats=inf,dogs=1", "positive"),
    ("cats=nan,dogs=1", "positive"),
    ("cats=1,cats=2,dogs=1", "twice"),
    ("cats:1,dogs:2", "NAME=WEIGHT"),
    ("sometimes", "NAME=WEIGHT"),
])
def test_bad_explicit_weights_are_a_clear_error(value, why):
    with pytest.raises(ValueError) as e:
        C.class_weights(value, NAMES, [3, 1])
    msg = str(e.value)
    assert "`--class_weight`" in msg and f"class_weight={value!r}" in msg and why in msg


def test_validate_refuses_a_malformed_value_before_reading_data():
    c = C.baseline()
    c.train.model_dir = "m"
    c.train.class_weight = "cats=x,dogs=1"
    with pytest.raises(ValueError, match="`--class_weight`.*positive"):
        c.validate()
    c.data.class_names = ("cats", "dogs")
    c.train.class_weight = "cats=1,birds=2"
    with pytest.raises(ValueError, match=r"unknown \['birds'\]"):
        c.validate()  # names are known already when --class_names is given
    c.train.class_weight = "cats=1,dogs=2"
    c.validate()


def test_flag_on_every_stage_recorded_as_given():
    fv = flags.FlagValues()
    cli.define_training_flags(fv)
    fv(["prog", "--train_dir=t", "--model_dir=m"])
    assert cli.config_from_flags("baseline", fv).train.class_weight == "none"
    fv(["prog", "--class_weight=cats=1,dogs=3"])
    for stage in C.STAGES:
        assert cli.config_from_flags(stage, fv).train.class_weight == "cats=1,dogs=3"
    assert "balanced" in fv["class_weight"].help


def test_a_source_without_counts_refuses_balanced_but_takes_explicit_weights():
    index = batching.DataIndex(NAMES, batching.SourceSplit(["a.tfrecord"], 40),
                               batching.SourceSplit(["b.tfrecord"], 10), [])
    c = C.baseline()
    c.train.class_weight = "balanced"
    with pytest.raises(ValueError, match="`--class_weight`.*--class_weight=cats=1,dogs=1 "):
        train.resolve_class_weight(c, index)
    c.train.class_weight = "cats=1,dogs=3"
    assert train.resolve_class_weight(c, index) == {"cats": 1.0, "dogs": 3.0}


def test_weighted_training_split_carries_weights_by_label():
    # The multi-worker input maps weights itself (Keras cannot map a
    # distributed dataset): a binary (batch, 1) float label and int labels.
    binary = tf.data.Dataset.from_tensor_slices(
        (np.zeros((4, 2), np.float32), np.array([[0.], [1.], [1.], [0.]], np.float32))
    ).batch(2)
    got = [w.numpy().tolist() for _, _, w in train.with_class_weights(binary, [0.5, 2.0])]
    assert got == [[0.5, 2.0], [2.0, 0.5]]
    sparse = tf.data.Dataset.from_tensor_slices(
        (np.zeros((3, 2), np.float32), np.array([2, 0, 1], np.int32))).batch(3)
    (_, _, w), = list(train.with_class_weights(sparse, [1.0, 2.0, 3.0]))
    assert w.numpy().tolist() == [3.0, 1.0, 2.0]


def _imbalanced_config(tmp_path, class_weight, name):
    root = tmp_path / "data"
    if not root.exists():  # 24 cats, 8 dogs for training; 6 + 6 to validate
        make_class_folder(root / "tr", per_class=24, seed=1)
        for i in range(8, 24):
            os.remove(root / "tr" / "dogs" / f"dogs_{i:03d}.jpg")
        make_class_folder(root / "val", per_class=6, seed=3)
    c = C.baseline()
    c.data.train_dir, c.data.val_dir = str(root / "tr"), str(root / "val")
    c.data.image_size, c.data.batch_size = (32, 32), 8
    c.data.deterministic = True  # same batches in every run: only the weights differ
    c.train.epochs, c.train.verbose = 1, 0
    c.train.class_weight = class_weight
    c.train.model_dir = str(tmp_path / name)
    return c


@pytest.fixture
def fit_calls(monkeypatch):
    calls = []
    real = keras.Model.fit

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", spy)
    return calls


def test_balanced_weights_reach_fit_and_the_run_records(tmp_path, fit_calls):
    c = _imbalanced_config(tmp_path, "balanced", "balanced")
    result = train.run(c, progress=False)
    # 24 cats, 8 dogs: 32 / (2 * 24) and 32 / (2 * 8).
    assert fit_calls[-1]["class_weight"] == {0: 32 / 48, 1: 2.0}
    assert result.metrics["class_weight"] == {"cats": 32 / 48, "dogs": 2.0}
    metrics = json.load(open(os.path.join(c.train.model_dir, "metrics.json")))
    assert metrics["class_weight"] == {"cats": 32 / 48, "dogs": 2.0}
    config = json.load(open(os.path.join(c.train.model_dir, "config.json")))
    assert config["train"]["class_weight"] == "balanced"
    # Validation is not weighted: its loss is the saved model's plain loss.
    _, val_ds, _ = data.build_datasets(c.data, data.index_source(c.data, progress=False))
    saved = models.compile_model(models.load_model(c.train.model_dir), 2, 1e-3)
    plain_val = saved.evaluate(val_ds, verbose=0)[0]
    assert result.metrics["final"]["val_loss"] == pytest.approx(plain_val, rel=1e-4)

    plain = train.run(_imbalanced_config(tmp_path, "none", "none"), progress=False)
    assert fit_calls[-1]["class_weight"] is None
    assert plain.metrics["class_weight"] is None
    # Same seed and data: only the class weights differ, and so do the trained
    # parameters. (Not the epoch's mean loss: balanced weights average to 1
    # over the split, so on one epoch it came out within 0.1% by chance.)
    weighted = models.load_model(c.train.model_dir).get_weights()
    unweighted = models.load_model(str(tmp_path / "none")).get_weights()
    assert max(float(np.abs(a - b).max()) for a, b in zip(weighted, unweighted)) > 1e-4


def test_rerun_with_another_class_weight_is_refused(tmp_path):
    c = _imbalanced_config(tmp_path, "none", "run")
    train.run(c, progress=False)
    changed = copy.deepcopy(c)
    changed.train.class_weight = "balanced"
    with pytest.raises(ValueError, match='class_weight "none" -> "balanced"'):
        train.run(changed, progress=False)


def test_fast_features_weight_the_head_training(tiny_folders, tmp_path, fit_calls):
    c = C.feature_extraction()
    train_dir, val_dir = tiny_folders
    c.data = C.DataConfig(train_dir=train_dir, val_dir=val_dir, image_size=(32, 32),
                          batch_size=8)
    c.model.backbone, c.model.backbone_alpha, c.model.weights = "mobilenet", 0.25, "none"
    c.train.epochs, c.train.verbose, c.train.fast_features = 1, 0, True
    c.train.class_weight = "dogs=3,cats=1"
    c.train.model_dir = str(tmp_path / "fast")
    result = train.run(c, progress=False)
    assert fit_calls[-1]["class_weight"] == {0: 1.0, 1: 3.0}  # the head's fit
    assert result.metrics["class_weight"] == {"cats": 1.0, "dogs": 3.0}


def test_weights_of_one_hot_soft_labels_are_those_of_their_dominant_class():
    # --label_smoothing with three classes: one-hot rows, smoothed.
    labels = np.array([[0.9, 0.05, 0.05], [0.05, 0.05, 0.9]], np.float32)
    ds = tf.data.Dataset.from_tensors((np.zeros((2, 2), np.float32), labels))
    (_, _, w), = list(train.with_class_weights(ds, [1.0, 2.0, 3.0]))
    assert w.numpy().tolist() == [1.0, 3.0]
