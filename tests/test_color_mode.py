"""--color_mode: grayscale runs decode, train, evaluate, predict and export 1-channel pixels."""

import glob
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from catdog import cli
from catdog import config as C
from catdog import data
from catdog import decode
from catdog import evaluate
from catdog import export
from catdog import models
from catdog import predict
from catdog import resume_check
from catdog import train
import helpers
from helpers import validation_copy

GRAY = decode.DecodeOptions(color_mode="grayscale")


def _keras_gray(path, size, method="bilinear"):
    """Keras' grayscale load (decode_image(channels=1)) and the same resize, rounded."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=1, expand_animations=False)
    image = tf.image.resize(tf.cast(image, tf.float32), size, method=method)
    return tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), tf.uint8).numpy()


def test_grayscale_decode_is_keras_grayscale_decode(tmp_path):
    rng = np.random.RandomState(0)
    pixels = rng.randint(0, 256, (30, 40, 3)).astype(np.uint8)
    for ext in ("jpg", "png"):
        path = helpers.write_image(str(tmp_path / f"x.{ext}"), pixels)
        got = decode.decode_and_resize(tf.io.read_file(path), (16, 20), GRAY).numpy()
        assert got.shape == (16, 20, 1)
        np.testing.assert_array_equal(got, _keras_gray(path, (16, 20)))
        nearest = decode.DecodeOptions(color_mode="grayscale", interpolation="nearest")
        np.testing.assert_array_equal(
            decode.decode_and_resize(tf.io.read_file(path), (16, 20), nearest).numpy(),
            _keras_gray(path, (16, 20), "nearest"))


@pytest.mark.parametrize("resize_mode", ["stretch", "crop", "pad"])
def test_every_grayscale_decode_path_is_one_channel(tmp_path, resize_mode):
    options = decode.DecodeOptions(color_mode="grayscale", resize_mode=resize_mode)
    turned = tf.io.read_file(helpers.write_oriented_jpeg(tmp_path / "o6.jpg", 6))
    big = tf.io.read_file(helpers.write_image(
        str(tmp_path / "big.jpg"), np.random.RandomState(1).randint(
            0, 256, (128, 160, 3)).astype(np.uint8)))
    for contents in (turned, big):
        for dct in (False, True):
            fn = decode.decoder(dct, options)
            assert fn(contents, (16, 16)).shape == (16, 16, 1)
            ds = tf.data.Dataset.from_tensors(contents).map(lambda c: fn(c, (16, 16)))
            assert ds.element_spec.shape == (16, 16, 1)
            assert next(iter(ds)).shape == (16, 16, 1)


def test_color_mode_defaults_and_records():
    assert decode.DecodeOptions().color_mode == "rgb"
    assert decode.options_of({}).color_mode == "rgb"  # an old config.json
    assert decode.options_of({"color_mode": "grayscale"}).channels == 1
    assert GRAY.record()["color_mode"] == "grayscale"
    assert C.Config().data.color_mode == "rgb"


def test_a_file_cache_made_in_rgb_is_not_reused_in_grayscale(tmp_path):
    paths = [helpers.write_image(str(tmp_path / "d" / f"{i}.png"),
                                 np.full((16, 16, 3), (200, 10 * i, 0), np.uint8))
             for i in range(2)]
    cache = tmp_path / "cache"

    def epoch(options):
        ds = data.build_dataset(paths, [0, 1], num_classes=2, image_size=(16, 16),
                                batch_size=2, training=False, cache=str(cache),
                                decode_options=options)
        return np.concatenate([x.numpy() for x, _ in ds])

    assert epoch(decode.DecodeOptions()).shape == (2, 16, 16, 3)
    gray = epoch(GRAY)
    assert gray.shape == (2, 16, 16, 1)
    for path, image in zip(paths, gray):
        np.testing.assert_array_equal(image, _keras_gray(path, (16, 16)))


def test_color_mode_is_validated_and_refused_with_a_backbone():
    c = C.for_stage("baseline")
    c.data.color_mode = "rgba"
    with pytest.raises(ValueError, match="color_mode"):
        c.validate()
    for stage in ("feature_extraction", "fine_tuning"):
        c = C.for_stage(stage)
        c.data.color_mode = "grayscale"
        with pytest.raises(ValueError, match=r"--color_mode=grayscale.*--backbone.*rgb"):
            c.validate()
    c = C.for_stage("augmented")
    c.data.color_mode, c.train.model_dir = "grayscale", "run"
    c.validate()


def test_color_mode_is_a_resume_setting():
    a, b = C.for_stage("baseline"), C.for_stage("baseline")
    b.data.color_mode = "grayscale"
    assert resume_check.resume_settings(a)["color_mode"] == "rgb"
    assert resume_check.resume_settings(a) != resume_check.resume_settings(b)


def test_grayscale_augmentation_with_rand_augment_runs():
    c = C.for_stage("augmented")
    c.data.image_size, c.data.color_mode = (32, 32), "grayscale"
    c.model.rand_augment, c.model.rand_augment_num_ops = True, 11
    model = models.build_model(c, 2)
    assert model.input.shape[1:] == (32, 32, 1)
    x = np.random.RandomState(0).randint(0, 256, (4, 32, 32, 1)).astype(np.float32)
    assert model(x, training=True).shape == (4, 1)


def test_grayscale_baseline_run_decodes_one_channel_everywhere(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    c = C.for_stage("baseline")
    c.data.train_dir, c.data.val_dir = train_dir, val_dir
    c.data.image_size, c.data.batch_size, c.data.color_mode = (32, 32), 8, "grayscale"
    c.train.epochs, c.train.verbose = 1, 0
    c.train.model_dir = str(tmp_path / "run")
    train.run(c)
    run = c.train.model_dir
    assert json.loads(open(os.path.join(run, "config.json")).read())["data"][
        "color_mode"] == "grayscale"
    model = keras.models.load_model(os.path.join(run, "model.keras"))
    assert tuple(model.input.shape[1:]) == (32, 32, 1)

    paths = sorted(glob.glob(os.path.join(val_dir, "*", "*")))
    expected = model.predict(np.stack([_keras_gray(p, (32, 32)) for p in paths]),
                             verbose=0)[:, 0]
    rows = predict.predict_files(run, paths)
    got = [r["probability"] if r["class"] == "dogs" else 1 - r["probability"] for r in rows]
    np.testing.assert_allclose(got, expected, atol=1e-5)

    result = evaluate.evaluate(run, val_dir, out_dir=str(tmp_path / "eval"))
    by_path = {os.path.basename(r["path"]): r["probability"] for r in
               evaluate.read_predictions_csv(str(tmp_path / "eval" / "predictions.csv"))}
    np.testing.assert_allclose([by_path[os.path.basename(p)] for p in paths],
                               expected, atol=1e-5)
    assert result is not None

    saved = export.export_saved_model(run, str(tmp_path / "export"), version=None)
    loaded = tf.saved_model.load(saved)
    spec = loaded.signatures["serve_images"].structured_input_signature[1]["images"]
    assert tuple(spec.shape[1:]) == (32, 32, 1)
    out = loaded.signatures["serving_default"](
        image_bytes=tf.constant([open(p, "rb").read() for p in paths]))
    probs = out["probabilities"].numpy()
    np.testing.assert_allclose(probs[:, -1] if probs.shape[1] > 1 else probs[:, 0],
                               expected, atol=1e-5)
    rows = predict.predict_files(saved, paths)
    got = [r["probability"] if r["class"] == "dogs" else 1 - r["probability"] for r in rows]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_fine_tuning_inherits_color_mode(tmp_path):
    init = tmp_path / "fe"
    init.mkdir()
    (init / "config.json").write_text(json.dumps(
        {"stage": "feature_extraction", "data": {"color_mode": "grayscale"}}))
    from absl import flags  # pylint: disable=import-outside-toplevel
    fv = flags.FlagValues()
    cli.define_training_flags(fv)
    fv(["prog"])
    assert "color_mode" in cli.inherit_data_flags(str(init), fv)
    assert fv.color_mode == "grayscale"


def test_grayscale_with_a_backbone_stage_exits_2(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=helpers.REPO)
    proc = subprocess.run(
        [sys.executable, os.path.join(helpers.REPO, "scripts", "train_feature_extraction.py"),
         f"--train_dir={train_dir}", f"--val_dir={val_dir}", "--image_size=32",
         "--epochs=1", "--verbose=0", "--color_mode=grayscale", "--weights=none",
         f"--model_dir={tmp_path}/fe"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--color_mode" in proc.stderr and "Traceback" not in proc.stderr


def test_every_source_yields_one_channel_in_grayscale(tmp_path):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    from catdog.sources import tfrecord_writer  # pylint: disable=import-outside-toplevel
    root = str(helpers.make_class_folder(tmp_path / "src", per_class=4, size=20))
    out = str(tmp_path / "shards")
    tfrecord_writer.write_tfrecords(root, out, num_shards=1, progress=False)
    names = sorted(f"{c}/{f}" for c in ("cats", "dogs") for f in os.listdir(f"{root}/{c}"))
    # Each CSV beside its images (the validation ones a copy: the same files
    # in both splits are refused).
    (tmp_path / "src" / "labels.csv").write_text(
        "file,label\n" + "".join(f"{n},{n.split('/')[0]}\n" for n in names))
    val_root = validation_copy(root)
    common = dict(image_size=(16, 16), batch_size=4, color_mode="grayscale",
                  deterministic=True, cache="none")
    configs = {
        "folder": C.DataConfig(train_dir=root, val_dir=val_root, **common),
        "csv": C.DataConfig(train_csv=os.path.join(root, "labels.csv"),
                            val_csv=os.path.join(val_root, "labels.csv"), **common),
        "tfrecords": C.DataConfig(train_tfrecords=os.path.join(out, "*.tfrecord"),
                                  val_tfrecords=os.path.join(validation_copy(out), "*.tfrecord"),
                                  **common),
    }
    pixels = {}
    for name, config in configs.items():
        train_ds, val_ds, _ = data.build_datasets(config, progress=False) \
            if name != "tfrecords" else data.build_datasets(config)
        assert train_ds.element_spec[0].shape[1:] == (16, 16, 1), name
        assert next(iter(train_ds))[0].shape == (4, 16, 16, 1), name
        pixels[name] = sorted(x.tobytes() for b, _ in val_ds for x in b.numpy())
    assert pixels["folder"] == pixels["csv"] == pixels["tfrecords"]
    assert pixels["folder"] == sorted(
        _keras_gray(os.path.join(root, n), (16, 16)).tobytes() for n in names)
    with tfds.testing.mock_data(num_examples=8):
        train_ds, val_ds, _ = data.build_datasets(C.DataConfig(
            tfds_name="cats_vs_dogs", image_size=(16, 16), batch_size=4,
            color_mode="grayscale"))
        assert next(iter(train_ds))[0].shape == (4, 16, 16, 1)
        assert next(iter(val_ds))[0].shape[1:] == (16, 16, 1)


def test_a_grayscale_pipeline_with_backbone_stages_is_refused_before_training(tmp_path):
    from catdog import stages  # pylint: disable=import-outside-toplevel
    base = C.Config()
    base.data.color_mode = "grayscale"
    with pytest.raises(ValueError, match=r"--color_mode=grayscale.*--stages=baseline,augmented"):
        stages.run_pipeline(base, str(tmp_path / "p"))
    assert not (tmp_path / "p" / "baseline").exists()
