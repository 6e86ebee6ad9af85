"""TFRecord shards stored at the training size: written decoded and resized,
read without a second resize when the run's size and decode match."""

import json
import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from catdog import config as C
from catdog import data
from catdog import decode
from catdog import train
from catdog.sources import tfrecord_writer
from catdog.sources import tfrecords
import helpers
from helpers import REPO, make_class_folder, validation_copy, write_image

SIZE = (16, 20)


def _elements(ds):
    """Every (image bytes, shape, label) of one pass, order-free."""
    out = []
    for x, y in ds:
        out += [(a.tobytes(), a.shape, float(np.ravel(b)[0]))
                for a, b in zip(x.numpy(), y.numpy())]
    return sorted(out)


def _images(ds):
    return np.concatenate([x.numpy() for x, _ in ds])


@pytest.fixture
def photos(tmp_path):
    """Class folders of mixed sizes, formats and EXIF orientations."""
    root = tmp_path / "src"
    upright = helpers.upright_pixels(48, 32, block=8)
    for k in (1, 6):
        helpers.write_oriented_jpeg(root / "cats" / f"o{k}.jpg", k, upright)
        helpers.write_oriented_jpeg(root / "dogs" / f"o{k}.jpg", k, upright[::-1])
    rng = np.random.RandomState(0)
    write_image(str(root / "cats" / "wide.png"),
                rng.randint(0, 255, (30, 80, 3)).astype(np.uint8))
    write_image(str(root / "dogs" / "tall.jpg"),
                np.kron(rng.randint(0, 255, (9, 4, 3)), np.ones((8, 8, 1))).astype(np.uint8))
    return str(root)


def _write(root, out, **kw):
    kw.setdefault("image_size", SIZE)
    return tfrecord_writer.write_tfrecords(root, str(out), num_shards=2, progress=False, **kw)


def _configs(root, out, options=decode.DecodeOptions(), image_size=SIZE):
    common = dict(image_size=image_size, batch_size=2, **options.record())
    folder = C.DataConfig(train_dir=root, val_dir=validation_copy(root), **common)
    shards = C.DataConfig(train_tfrecords=os.path.join(out, "*.tfrecord"),
                          val_tfrecords=os.path.join(validation_copy(out), "*.tfrecord"),
                          **common)
    return folder, shards


@pytest.fixture
def resize_calls(monkeypatch):
    """Every tf.image resize traced from here on (the reader's or the decode's)."""
    calls = []
    for name in ("resize", "resize_with_pad"):
        real = getattr(tf.image, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(tf.image, name, spy)
    return calls


def test_shards_at_size_record_it_in_the_manifest_and_examples(photos, tmp_path):
    manifest = _write(photos, tmp_path / "jpeg", jpeg_quality=90,
                      decode_options=decode.DecodeOptions(resize_mode="crop",
                                                          interpolation="area"))
    assert manifest["image_size"] == list(SIZE) and manifest["raw"] is False
    assert (manifest["resize_mode"], manifest["interpolation"], manifest["color_mode"],
            manifest["exif_orientation"], manifest["jpeg_quality"]) == (
                "crop", "area", "rgb", True, 90)
    assert json.load(open(tmp_path / "jpeg" / "manifest.json")) == manifest
    raw = _write(photos, tmp_path / "raw", raw=True,
                 decode_options=decode.DecodeOptions(color_mode="grayscale"))
    assert raw["raw"] is True and raw["jpeg_quality"] is None
    assert raw["color_mode"] == "grayscale"
    for out, fmt, channels in (("jpeg", "jpeg", 3), ("raw", "raw", 1)):
        files, _, n = tfrecords.resolve_shards(str(tmp_path / out / "*.tfrecord"))
        assert n == 6
        for record in tf.data.TFRecordDataset(files):
            p = tf.io.parse_single_example(record, tfrecords._FEATURES)
            assert p["image/format"].numpy().decode() == fmt
            assert (int(p["image/height"]), int(p["image/width"]),
                    int(p["image/channels"])) == (*SIZE, channels)
            contents = p["image/encoded"]
            if fmt == "raw":
                assert len(contents.numpy()) == SIZE[0] * SIZE[1] * channels
            else:
                assert tuple(tf.io.decode_jpeg(contents).shape) == (*SIZE, channels)
    # Shards of the files as they are record no stored size.
    plain = tfrecord_writer.write_tfrecords(photos, str(tmp_path / "plain"), num_shards=1,
                                            progress=False)
    assert plain["image_size"] is None and plain["raw"] is False


@pytest.mark.parametrize("options", [
    decode.DecodeOptions(),
    decode.DecodeOptions(resize_mode="crop", interpolation="bicubic"),
    decode.DecodeOptions(resize_mode="pad", color_mode="grayscale", exif_orientation=False),
], ids=["default", "crop-bicubic", "pad-gray-noexif"])
def test_raw_shards_at_size_give_the_folder_pixels_exactly_without_a_resize(
        photos, tmp_path, resize_calls, options):
    out = str(tmp_path / "raw")
    _write(photos, out, raw=True, decode_options=options)
    folder_cfg, shard_cfg = _configs(photos, out, options)
    expected = _elements(data.build_datasets(folder_cfg, progress=False)[1])
    resize_calls.clear()
    s_train, s_val, _ = data.build_datasets(shard_cfg)
    got = _elements(s_val)
    assert resize_calls == []  # stored at the run's size: no resize traced
    assert got == expected
    x, _ = next(iter(s_train))
    assert x.dtype == tf.uint8 and tuple(x.shape) == (2, *SIZE, options.channels)


def test_jpeg_shards_at_size_are_close_to_the_folder_pixels_without_a_resize(
        photos, tmp_path, resize_calls):
    out = str(tmp_path / "jpeg")
    _write(photos, out, jpeg_quality=95)
    folder_cfg, shard_cfg = _configs(photos, out)
    expected = _images(data.build_datasets(folder_cfg, progress=False)[1])
    resize_calls.clear()
    got = _images(data.build_datasets(shard_cfg)[1])
    assert resize_calls == []
    assert got.shape == expected.shape == (6, *SIZE, 3)
    # The shards hold the images in another order: match each to its nearest.
    diffs = np.abs(got[:, None].astype(int) - expected[None].astype(int))
    nearest = diffs.reshape(6, 6, -1).mean(-1).argmin(1)
    # (o1 and o6 of a class are the same picture upright: equal pixels.)
    assert {expected[i].tobytes() for i in nearest} == {e.tobytes() for e in expected}
    err = (got.astype(float) - expected[nearest].astype(float)) ** 2
    psnr = 10 * np.log10(255.0 ** 2 / err.mean())
    assert psnr > 30, psnr
    # Pixels the decode of the stored JPEG gives, as stored: no resize on top.
    files, _, _ = tfrecords.resolve_shards(os.path.join(out, "*.tfrecord"))
    stored = [tf.io.decode_jpeg(tfrecords.parse_example(r)[0], channels=3).numpy()
              for r in tf.data.TFRecordDataset(files)]
    assert sorted(a.tobytes() for a in got) == sorted(a.tobytes() for a in stored)


def test_old_manifests_read_as_before(photos, tmp_path):
    out = tmp_path / "old"
    tfrecord_writer.write_tfrecords(photos, str(out), num_shards=1, progress=False)
    manifest = json.load(open(out / "manifest.json"))
    for key in ("image_size", "resize_mode", "interpolation", "color_mode",
                "exif_orientation", "raw"):
        manifest.pop(key)
    (out / "manifest.json").write_text(json.dumps(manifest))
    folder_cfg, shard_cfg = _configs(photos, str(out))
    assert _elements(data.build_datasets(shard_cfg)[1]) == _elements(
        data.build_datasets(folder_cfg, progress=False)[1])


@pytest.mark.parametrize("raw", [False, True], ids=["jpeg", "raw"])
def test_another_image_size_warns_and_resizes_the_stored_pixels(photos, tmp_path, caplog,
                                                                raw):
    out = str(tmp_path / "shards")
    _write(photos, out, raw=raw)
    _, shard_cfg = _configs(photos, out, image_size=(12, 12))
    with caplog.at_level(logging.INFO, logger="absl"):
        _, val, _ = data.build_datasets(shard_cfg)
    assert "16,20" in caplog.text and "--image_size=12,12" in caplog.text
    got = _images(val)
    assert got.shape == (6, 12, 12, 3)
    # Resized from the stored pixels, as a decode of the stored form at 16x20 would give.
    files, _, _ = tfrecords.resolve_shards(os.path.join(out, "*.tfrecord"))
    stored = []
    for record in tf.data.TFRecordDataset(sorted(files)):
        contents = tfrecords.parse_example(record)[0]
        image = (tf.reshape(tf.io.decode_raw(contents, tf.uint8), (*SIZE, 3)) if raw
                 else tf.io.decode_jpeg(contents, channels=3))
        stored.append(decode.resize_to_uint8(image, (12, 12)).numpy())
    assert sorted(a.tobytes() for a in got) == sorted(a.tobytes() for a in stored)


def test_another_resize_mode_at_the_same_size_warns(photos, tmp_path, caplog):
    out = str(tmp_path / "shards")
    _write(photos, out, raw=True)
    _, shard_cfg = _configs(photos, out, decode.DecodeOptions(resize_mode="crop"))
    with caplog.at_level(logging.INFO, logger="absl"):
        _, val, _ = data.build_datasets(shard_cfg)
    assert "resize_mode=stretch" in caplog.text and "resize_mode=crop" in caplog.text
    assert _images(val).shape == (6, *SIZE, 3)


def test_another_color_mode_than_the_shards_is_refused(photos, tmp_path):
    out = str(tmp_path / "shards")
    _write(photos, out, raw=True)
    _, shard_cfg = _configs(photos, out, decode.DecodeOptions(color_mode="grayscale"))
    with pytest.raises(ValueError, match=r"color_mode=rgb.*--color_mode=grayscale"):
        data.build_datasets(shard_cfg)


def test_a_file_cache_of_shards_rebuilt_in_another_form_is_not_reused(photos, tmp_path):
    out, cache = str(tmp_path / "shards"), str(tmp_path / "cache")

    def read(options):
        _write(photos, out, raw=True, decode_options=options, prefix="train")
        files, _, n = tfrecords.resolve_shards(os.path.join(out, "*.tfrecord"))
        ds = tfrecords.build_tfrecord_dataset(
            files, num_classes=2, image_size=SIZE, batch_size=4, training=False,
            num_examples=n, cache=cache, decode_options=options)
        return _images(ds)

    stretch = read(decode.DecodeOptions())
    cropped = read(decode.DecodeOptions(resize_mode="crop"))
    assert not np.array_equal(stretch, cropped)
    folder_cfg, _ = _configs(photos, out, decode.DecodeOptions(resize_mode="crop"))
    expected = _elements(data.build_datasets(folder_cfg, progress=False)[1])
    assert sorted(a.tobytes() for a in cropped) == [e[0] for e in expected]


def _sampling(jpeg: bytes) -> list:
    """Each component's (horizontal, vertical) sampling factors, from the JPEG's SOF."""
    i = 2
    while i + 4 <= len(jpeg):
        marker, length = jpeg[i + 1], int.from_bytes(jpeg[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            return [(jpeg[i + 11 + 3 * k] >> 4, jpeg[i + 11 + 3 * k] & 15)
                    for k in range(jpeg[i + 9])]
        i += 2 + length
    raise AssertionError("no SOF segment")


def test_jpeg_chroma_420_halves_the_stored_colour_and_is_recorded(photos, tmp_path):
    full = _write(photos, tmp_path / "444", jpeg_chroma="444")
    half = _write(photos, tmp_path / "420", jpeg_chroma="420")
    raw = _write(photos, tmp_path / "raw", raw=True)
    assert (full["jpeg_chroma"], half["jpeg_chroma"], raw["jpeg_chroma"]) == ("444", "420", None)
    for out, luma in (("444", (1, 1)), ("420", (2, 2))):
        # Luma sampled `luma` times as densely as each chroma component.
        assert _stored_sampling(tmp_path / out) == {(luma, (1, 1), (1, 1))}, out
    # Training reads them as stored, without a resize.
    _, shard_cfg = _configs(photos, str(tmp_path / "420"))
    got = _images(data.build_datasets(shard_cfg)[1])
    files, _, _ = tfrecords.resolve_shards(str(tmp_path / "420" / "*.tfrecord"))
    stored = [tf.io.decode_jpeg(tfrecords.parse_example(r)[0], channels=3).numpy()
              for r in tf.data.TFRecordDataset(files)]
    assert got.shape == (6, *SIZE, 3)
    assert sorted(a.tobytes() for a in got) == sorted(a.tobytes() for a in stored)


def _stored_sampling(out):
    files, _, _ = tfrecords.resolve_shards(str(out / "*.tfrecord"))
    return {tuple(_sampling(tfrecords.parse_example(r)[0].numpy()))
            for r in tf.data.TFRecordDataset(files)}


def test_default_chroma_halves_colour_only_at_sizes_where_it_costs_little(photos, tmp_path):
    # The default ("auto") stores 4:2:0 when both sides are at least
    # AUTO_CHROMA_MIN_SIDE (a cheaper decode every epoch, ~1 dB at 128-224 px)
    # and full colour below, where halving it smears small images.
    side = tfrecord_writer.AUTO_CHROMA_MIN_SIDE
    cases = {"big": ((side, side + 8), {}, "420", (2, 2)),
             "narrow": ((side - 1, side + 8), {}, "444", (1, 1)),
             "small": (SIZE, {}, "444", (1, 1)),
             "asked_444": ((side, side), {"jpeg_chroma": "444"}, "444", (1, 1))}
    for name, (size, kw, chroma, luma) in cases.items():
        manifest = _write(photos, tmp_path / name, image_size=size, **kw)
        assert manifest["jpeg_chroma"] == chroma, name
        assert _stored_sampling(tmp_path / name) == {(luma, (1, 1), (1, 1))}, name
    assert _write(photos, tmp_path / "raw", image_size=(side, side), raw=True)["jpeg_chroma"] is None
    # Without --image_size the files are stored as they are: "auto" asks nothing.
    stored = tfrecord_writer.write_tfrecords(photos, str(tmp_path / "files"), progress=False)
    assert stored["jpeg_chroma"] is None


def test_default_quality_is_90_at_a_size_and_95_for_max_side_re_encodes(photos, tmp_path):
    # At the training size the JPEG is decoded every first epoch and never
    # resized again: q90 (with 4:2:0 from 128 px) is what takes such shards
    # past 2x stock Keras. A --max_side re-encode is resized again by
    # training, so it keeps q95.
    at_size = _write(photos, tmp_path / "at_size")
    re_encoded = tfrecord_writer.write_tfrecords(photos, str(tmp_path / "max_side"),
                                                 max_side=40, progress=False)
    asked = _write(photos, tmp_path / "asked", jpeg_quality=97)
    assert (at_size["jpeg_quality"], re_encoded["jpeg_quality"], asked["jpeg_quality"]) == (
        tfrecord_writer.AT_SIZE_JPEG_QUALITY, tfrecord_writer.MAX_SIDE_JPEG_QUALITY, 97)
    assert (tfrecord_writer.AT_SIZE_JPEG_QUALITY, tfrecord_writer.MAX_SIDE_JPEG_QUALITY) == (90, 95)
    # The stored bytes are the training pixels encoded at that quality.
    expected = set()
    for cls in ("cats", "dogs"):
        for name in os.listdir(os.path.join(photos, cls)):
            pixels = decode.decode_and_resize(
                tf.io.read_file(os.path.join(photos, cls, name)), SIZE)
            expected.add(tf.io.encode_jpeg(pixels, quality=90,
                                           chroma_downsampling=False).numpy())
    files, _, _ = tfrecords.resolve_shards(str(tmp_path / "at_size" / "*.tfrecord"))
    assert {tfrecords.parse_example(r)[0].numpy()
            for r in tf.data.TFRecordDataset(files)} == expected


def test_at_size_arguments_are_checked(photos, tmp_path):
    with pytest.raises(ValueError, match=r"--jpeg_chroma.*auto, 444, 420.*jpeg_chroma='422'"):
        _write(photos, tmp_path / "o", jpeg_chroma="422")
    with pytest.raises(ValueError, match=r"--jpeg_chroma.*--image_size, without --raw"):
        _write(photos, tmp_path / "o", jpeg_chroma="420", raw=True)
    with pytest.raises(ValueError, match=r"--jpeg_chroma.*--image_size"):
        tfrecord_writer.write_tfrecords(photos, str(tmp_path / "o"), jpeg_chroma="420",
                                        progress=False)
    with pytest.raises(ValueError, match=r"--max_side.*--image_size.*max_side=64"):
        _write(photos, tmp_path / "o", max_side=64)
    with pytest.raises(ValueError, match=r"--raw.*--image_size"):
        tfrecord_writer.write_tfrecords(photos, str(tmp_path / "o"), raw=True,
                                        progress=False)
    with pytest.raises(ValueError, match=r"image_size"):
        _write(photos, tmp_path / "o", image_size=(0, 16))
    assert not os.path.exists(tmp_path / "o")


def _script(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", "build_tfrecords.py"),
                           *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_script_builds_shards_at_size_and_refuses_max_side_with_it(photos, tmp_path):
    out = tmp_path / "out"
    proc = _script(f"--data_dir={photos}", f"--output_dir={out}", "--image_size=12,16",
                   "--resize_mode=pad", "--interpolation=nearest", "--raw")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["image_size"], manifest["resize_mode"], manifest["interpolation"],
            manifest["raw"]) == ([12, 16], "pad", "nearest", True)
    proc = _script(f"--data_dir={photos}", f"--output_dir={tmp_path / 'o2'}",
                   "--image_size=32", "--max_side=64")
    assert proc.returncode == 2
    assert "--max_side" in proc.stderr and "--image_size" in proc.stderr
    proc = _script(f"--data_dir={photos}", f"--output_dir={tmp_path / 'o3'}",
                   "--resize_mode=crop")
    assert proc.returncode == 2 and "--image_size" in proc.stderr
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_training_runs_from_shards_at_the_training_size(tmp_path):
    train_dir = make_class_folder(tmp_path / "train", per_class=8, seed=1)
    val_dir = make_class_folder(tmp_path / "valid", per_class=4, seed=2)
    for root, out in ((train_dir, "st"), (val_dir, "sv")):
        tfrecord_writer.write_tfrecords(root, str(tmp_path / out), num_shards=2,
                                        image_size=(24, 24), raw=out == "st",
                                        progress=False)
    c = C.for_stage("baseline")
    c.data.train_tfrecords = str(tmp_path / "st" / "*.tfrecord")
    c.data.val_tfrecords = str(tmp_path / "sv" / "*.tfrecord")
    c.data.image_size, c.data.batch_size = (24, 24), 4
    c.train.epochs, c.train.verbose = 1, 0
    c.train.model_dir = str(tmp_path / "run")
    train.run(c)
    model = keras.models.load_model(os.path.join(c.train.model_dir, "model.keras"))
    assert tuple(model.input.shape[1:]) == (24, 24, 3)
    assert os.path.exists(os.path.join(c.train.model_dir, "history.csv"))


@pytest.mark.slow
def test_training_on_shards_of_another_color_mode_exits_2(photos, tmp_path):
    out = tmp_path / "shards"
    _write(photos, out, raw=True)
    glob = str(out / "*.tfrecord")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "train_baseline.py"),
         f"--train_tfrecords={glob}", f"--val_tfrecords={validation_copy(out)}/*.tfrecord",
         "--image_size=16,20",
         "--color_mode=grayscale", "--batch_size=2", "--epochs=1", "--verbose=0",
         f"--model_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "--color_mode=grayscale" in proc.stderr and "color_mode=rgb" in proc.stderr
