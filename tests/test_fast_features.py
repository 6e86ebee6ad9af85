import json
import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import SHARED, FakeMultiWorker

from catdog import config as C
from catdog import fast_features
from catdog import models
from catdog import train


MOBILENET = os.path.join(SHARED, "weights", "mobilenet_2_5_224_tf_no_top.h5")


def _transfer(pooling="avg", augment=False):
    aug = None
    if augment:
        from catdog import augment as augment_lib
        aug = augment_lib.build_augmentation(seed=1)
    return models.build_transfer((32, 32), 2, "mobilenet", weights="none", alpha=0.25,
                                 augmentation=aug, dropout=0.5, pooling=pooling)


@pytest.mark.parametrize("pooling", ["avg", "flatten"])
def test_split_reproduces_the_full_model(pooling):
    model = _transfer(pooling, augment=True)
    feature_model, head_model = fast_features.split_transfer_model(model)
    # Weightless layers after the backbone are computed once, with the features.
    assert feature_model.output_shape == (None, 256)  # 1x1x256 pooled or flattened
    assert [l.name for l in head_model.layers[1:]] == ["head_dropout", "predictions"]
    assert not any(l.name == "augmentation" for l in feature_model.layers)
    # The head model shares the full model's layers (and so its weights).
    assert head_model.get_layer("predictions") is model.get_layer("predictions")
    images = np.random.RandomState(0).randint(0, 256, (5, 32, 32, 3)).astype(np.uint8)
    full = model(images, training=False).numpy()
    eager = head_model(feature_model(images, training=False), training=False).numpy()
    np.testing.assert_allclose(eager, full, rtol=1e-5, atol=1e-6)
    ds = tf.data.Dataset.from_tensor_slices((images, np.zeros((5, 1), np.float32))).batch(2)
    feats, labels = fast_features.extract_features(feature_model, ds)
    assert feats.dtype == np.float32 and feats.shape == (5, 256) and labels.shape == (5, 1)
    np.testing.assert_allclose(head_model(feats, training=False).numpy(), full,
                               rtol=1e-5, atol=1e-6)


def test_cached_features_are_what_the_head_sees_in_training():
    # --fast_features trains the head on inference-mode features; the slow
    # path must feed the head the same features inside fit (EfficientNet has
    # Dropout in every block, which must stay off in the frozen backbone).
    model = models.build_transfer((32, 32), 2, "efficientnet_b0", weights="none")
    feature_model, _ = fast_features.split_transfer_model(model)
    in_training = keras.Model(model.inputs, model.get_layer("head_pool").output)
    images = np.random.RandomState(0).randint(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    cached = feature_model(images, training=False).numpy()
    np.testing.assert_array_equal(in_training(images, training=True).numpy(), cached)


def test_extract_features_skips_empty_batches():
    # An empty batch (a user's pre-batched data, a filtered split) never
    # reaches the backbone: oneDNN on some CPUs cannot convolve zero images.
    feature_model, _ = fast_features.split_transfer_model(_transfer())
    images = np.random.RandomState(0).randint(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    labels = np.ones((3, 1), np.float32)
    empty = tf.data.Dataset.from_tensors((tf.zeros((0, 32, 32, 3), tf.uint8),
                                          tf.zeros((0, 1), tf.float32)))
    full = tf.data.Dataset.from_tensors((images, labels))
    feats, got = fast_features.extract_features(feature_model, empty.concatenate(full).concatenate(empty))
    assert feats.shape == (3, 256) and got.shape == (3, 1)
    np.testing.assert_allclose(feats, feature_model(images, training=False).numpy(),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="No images"):
        fast_features.extract_features(feature_model, empty)


def test_fast_features_run_saves_the_full_model(tiny_folders, tmp_path, caplog):
    train_dir, val_dir = tiny_folders
    config = C.feature_extraction()
    config.data = C.DataConfig(train_dir=train_dir, val_dir=val_dir, image_size=(32, 32),
                               batch_size=8)
    config.model.backbone, config.model.backbone_alpha = "mobilenet", 0.25
    # Real pretrained features when the shared file is there: a random
    # MobileNet's pooled features at 32x32 are ~0 and leave nothing to learn.
    config.model.weights = MOBILENET if os.path.exists(MOBILENET) else "none"
    config.train.epochs, config.train.verbose = 3, 0
    config.train.fast_features = True
    config.train.model_dir = str(tmp_path / "fast")
    with caplog.at_level(logging.WARNING):
        result = train.run(config, progress=False)
    assert "UNAUGMENTED" in caplog.text  # the stage-3 preset has augmentation on
    model_dir = config.train.model_dir
    report = json.load(open(os.path.join(model_dir, fast_features.FEATURES_FILE)))
    assert report["train_examples"] == 32 and report["val_examples"] == 12
    assert report["feature_shape"] == [256] and len(report["epoch_seconds"]) == 3
    assert result.metrics["epochs_completed"] == 3
    assert result.metrics["best_val_accuracy"] is not None
    saved = models.load_model(model_dir)
    names = [l.name for l in saved.layers]
    # The full model, augmentation block included, with the trained head.
    assert names[:4] == ["image", "augmentation", "preprocess", "backbone"]
    assert names[-1] == "predictions"
    assert saved.count_params() == result.model.count_params()
    images = np.random.RandomState(1).randint(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    best_epoch = result.metrics["best_epoch"]
    if best_epoch == 3:  # the checkpoint holds the last epoch: same as the returned model
        np.testing.assert_allclose(saved.predict(images, verbose=0),
                                   result.model.predict(images, verbose=0), rtol=1e-5)
    # The head starts at zero; training on real features moved it (a random
    # backbone's features are ~0 at this size, so only with the real file).
    if os.path.exists(MOBILENET):
        trained_head = saved.get_layer("predictions").get_weights()[0]
        assert np.abs(trained_head).max() > 1e-4
    # Fine-tuning starts from it unchanged.
    ft = C.fine_tuning()
    ft.data = config.data
    ft.model.init_from = model_dir
    ft.train.epochs, ft.train.verbose = 1, 0
    ft.train.model_dir = str(tmp_path / "ft")
    assert train.run(ft, progress=False).metrics["epochs_completed"] == 1


def test_other_stages_ignore_fast_features(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    config = C.quick(C.baseline())
    config.data = C.DataConfig(train_dir=train_dir, val_dir=val_dir, image_size=(32, 32),
                               batch_size=8)
    config.train.epochs, config.train.verbose = 1, 0
    config.train.fast_features = True
    config.train.model_dir = str(tmp_path / "b")
    train.run(config, progress=False)
    assert not os.path.exists(os.path.join(config.train.model_dir, fast_features.FEATURES_FILE))


def _fit_head(model_dir, strategy=None):
    model = _transfer()
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (16, 32, 32, 3)).astype(np.uint8)
    labels = (np.arange(16) % 2).astype(np.float32)[:, None]
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    config = C.feature_extraction()
    config.data.batch_size = 8
    config.train.epochs, config.train.verbose = 1, 0
    config.train.model_dir = str(model_dir)
    return fast_features.fit_head_on_features(model, ds, ds, config, 2, strategy=strategy)


def test_only_the_chief_writes_the_report(tmp_path):
    worker_dir = tmp_path / "worker"
    worker_dir.mkdir()
    report = _fit_head(worker_dir, FakeMultiWorker(task_id=1, replicas=1))
    assert report["train_examples"] == 16  # it trained...
    assert os.listdir(worker_dir) == []    # ...and wrote nothing into model_dir
    chief_dir = tmp_path / "chief"
    chief_dir.mkdir()
    report = _fit_head(chief_dir)
    assert os.listdir(chief_dir) == [fast_features.FEATURES_FILE]
    assert json.loads((chief_dir / fast_features.FEATURES_FILE).read_text()) == report


def test_report_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / fast_features.FEATURES_FILE
    path.write_text('{"feature_seconds": 1.0}\n')
    real_replace = os.replace

    def fail_to_publish(src, dst, *args, **kwargs):
        # The new report is fully written to a temporary file; publishing it
        # fails (as a full disk or a vanished folder would).
        if os.path.basename(dst) == fast_features.FEATURES_FILE:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", fail_to_publish)
    with pytest.raises(OSError, match="No space left"):
        _fit_head(tmp_path)
    # Readers still see the previous complete file, and no temporary is left.
    assert path.read_text() == '{"feature_seconds": 1.0}\n'
    assert os.listdir(tmp_path) == [fast_features.FEATURES_FILE]
