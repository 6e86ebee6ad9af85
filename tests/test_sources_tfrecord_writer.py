"""Writing a class folder into TFRecord shards and their manifest."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from catdog.sources import tfrecord_writer
from catdog.sources import tfrecords
from helpers import REPO, make_class_folder, write_image
from test_sources_tfrecords import folder_with_bad_files  # noqa: F401  (shared fixture)
from test_sources_folder import parse_calls  # noqa: F401  (shared fixture)


def test_write_skips_bad_files_and_writes_manifest(folder_with_bad_files, tmp_path):
    before = {p: os.path.getsize(os.path.join(r, p)) for r, _, fs in os.walk(folder_with_bad_files)
              for p in fs}
    out = str(tmp_path / "shards")
    manifest = tfrecord_writer.write_tfrecords(folder_with_bad_files, out, num_shards=3,
                                               progress=False)
    assert manifest["class_names"] == ["cats", "dogs"]
    assert manifest["counts"] == {"cats": 9, "dogs": 10}
    assert manifest["num_examples"] == 19
    assert sorted(os.path.basename(s["path"]) for s in manifest["skipped"]) == [
        "broken.jpg", "empty.jpg"]
    assert all(s["reason"] for s in manifest["skipped"])
    names = sorted(os.listdir(out))
    assert names == ["manifest.json"] + [f"src-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert json.load(open(os.path.join(out, "manifest.json"))) == manifest
    assert sum(s["num_examples"] for s in manifest["shards"]) == 19
    # Shards are dealt from a shuffled order: each holds both classes.
    files, _, n = tfrecords.resolve_shards(os.path.join(out, "*.tfrecord"))
    assert n == 19 and len(files) == 3
    for f in files:
        labels = {int(tfrecords.parse_example(r)[1]) for r in tf.data.TFRecordDataset(f)}
        assert labels == {0, 1}
    # The user's files are only read.
    after = {p: os.path.getsize(os.path.join(r, p)) for r, _, fs in os.walk(folder_with_bad_files)
             for p in fs}
    assert after == before


def test_max_side_reencodes_large_images(tmp_path):
    root = str(tmp_path / "src")
    write_image(os.path.join(root, "a", "wide.png"), np.full((30, 80, 3), 200, np.uint8))
    write_image(os.path.join(root, "b", "small.jpg"), np.full((20, 10, 3), 50, np.uint8))
    out = str(tmp_path / "shards")
    manifest = tfrecord_writer.write_tfrecords(root, out, num_shards=1, max_side=40,
                                               jpeg_quality=90, progress=False)
    assert manifest["max_side"] == 40 and manifest["jpeg_quality"] == 90
    shard = tfrecords.resolve_shards(os.path.join(out, "*"))[0][0]
    rows = {}
    for r in tf.data.TFRecordDataset(shard):
        p = tf.io.parse_single_example(r, tfrecords._FEATURES)
        image = tf.io.decode_image(p["image/encoded"], channels=3)
        rows[p["image/filename"].numpy().decode()] = (
            p["image/format"].numpy().decode(), int(p["image/height"]),
            int(p["image/width"]), tuple(image.shape[:2]))
    assert rows[os.path.join("a", "wide.png")] == ("jpeg", 15, 40, (15, 40))
    assert rows[os.path.join("b", "small.jpg")] == ("jpeg", 20, 10, (20, 10))


def test_writer_errors_name_the_flag_and_value(tmp_path):
    root = make_class_folder(tmp_path / "src", per_class=2, size=12)
    with pytest.raises(ValueError, match="num_shards=-1"):
        tfrecord_writer.write_tfrecords(root, str(tmp_path / "o"), num_shards=-1)
    with pytest.raises(ValueError, match="jpeg_quality=0"):
        tfrecord_writer.write_tfrecords(root, str(tmp_path / "o"), jpeg_quality=0)


def test_script_writes_shards(tmp_path):
    root = make_class_folder(tmp_path / "src", per_class=3, size=12)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "build_tfrecords.py"),
         f"--data_dir={root}", f"--output_dir={out}", "--num_shards=2"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert '"num_examples": 6' in proc.stdout
    assert len(list(out.glob("*.tfrecord"))) == 2
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "build_tfrecords.py"),
         f"--output_dir={out}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--data_dir" in proc.stderr


def test_max_side_reencodes_exif_oriented_photos_upright(tmp_path):
    """A re-encoded JPEG keeps no EXIF, so the shard holds the upright pixels
    (and their height/width); a photo small enough to copy keeps its tag."""
    import helpers  # pylint: disable=import-outside-toplevel
    from catdog import decode  # pylint: disable=import-outside-toplevel
    upright = helpers.upright_pixels(96, 64, block=16)
    root = tmp_path / "photos"
    for k in (1, 6, 8, 3):
        helpers.write_oriented_jpeg(root / "a" / f"o{k}.jpg", k, upright)
        helpers.write_oriented_jpeg(root / "b" / f"o{k}.jpg", k, upright[:48, :32])
    out = str(tmp_path / "shards")
    tfrecord_writer.write_tfrecords(str(root), out, num_shards=1, max_side=64,
                                    progress=False)
    files, _, n = tfrecords.resolve_shards(os.path.join(out, "*.tfrecord"))
    assert n == 8
    as_stored = decode.DecodeOptions(exif_orientation=False)
    for record in tf.data.TFRecordDataset(files):
        example = tf.io.parse_single_example(record, {
            "image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/height": tf.io.FixedLenFeature([], tf.int64),
            "image/width": tf.io.FixedLenFeature([], tf.int64),
            "image/class/label": tf.io.FixedLenFeature([], tf.int64)})
        contents = example["image/encoded"]
        small = int(example["image/class/label"]) == 1
        # Height and width as the image is seen: upright (re-encoded: longest side 64).
        size = (int(example["image/height"]), int(example["image/width"]))
        assert size == ((48, 32) if small else (64, 43))
        # The copied small photo is turned by the decode; the re-encoded one
        # is upright as stored.
        image = decode.decode_and_resize(
            contents, (48, 32), decode.DecodeOptions() if small else as_stored).numpy()
        expected = (upright[:48, :32] if small else
                    decode.decode_and_resize(tf.io.encode_png(upright), (48, 32)).numpy())
        diff = np.abs(image.astype(int) - expected.astype(int)).mean()
        # (Re-encoding blurs the block edges twice: antialiased resize, JPEG.)
        assert diff < (6 if small else 15), (size, diff)
        half_turn = np.abs(image.astype(int) - expected[::-1, ::-1].astype(int)).mean()
        assert half_turn > 40, (size, half_turn)


def _shards_of_oriented_photos(tmp_path, turned):
    import helpers  # pylint: disable=import-outside-toplevel
    upright = helpers.upright_pixels()
    root = tmp_path / "photos"
    for i in range(3):
        helpers.write_oriented_jpeg(root / "a" / f"u{i}.jpg", 1, upright)
    for k in turned or (1,):
        helpers.write_oriented_jpeg(root / "b" / f"t{k}.jpg", k, upright)
    out = str(tmp_path / "shards")
    manifest = tfrecord_writer.write_tfrecords(str(root), out, num_shards=2, progress=False)
    files, _, n = tfrecords.resolve_shards(os.path.join(out, "*.tfrecord"))
    return upright, manifest, files, n


def _read_shards(files, n):
    ds = tfrecords.build_tfrecord_dataset(
        files, num_classes=2, image_size=(48, 32), batch_size=2, training=False,
        num_examples=n, cache="none", deterministic=True)
    return np.concatenate([x.numpy() for x, _ in ds])


@pytest.mark.parametrize("turned", [(), (6, 3)])
def test_shards_of_files_keep_the_checked_orientations_so_reading_parses_no_exif(
        tmp_path, parse_calls, turned):
    """The writer checked every file's EXIF orientation: the manifest says
    whether all are upright and each example carries its own, so reading
    the shards builds no EXIF parse and still turns every photo upright."""
    upright, manifest, files, n = _shards_of_oriented_photos(tmp_path, turned)
    assert manifest["orientations"] == ("per_example" if turned else "upright")
    stored = {}
    for record in tf.data.TFRecordDataset(files):
        p = tf.io.parse_single_example(record, tfrecords._FEATURES)
        stored[os.path.basename(p["image/filename"].numpy().decode())] = int(
            p["image/orientation"])
    assert stored == {"u0.jpg": 1, "u1.jpg": 1, "u2.jpg": 1,
                      **{f"t{k}.jpg": k for k in turned or (1,)}}
    parse_calls.clear()
    images = _read_shards(files, n)
    assert parse_calls == []
    assert len(images) == n
    diff = np.abs(images.astype(int) - upright.astype(int)).mean(axis=(1, 2, 3))
    assert (diff < 2).all(), diff  # every photo turned upright


def test_shards_whose_manifest_predates_the_orientations_parse_exif_in_the_graph(
        tmp_path, parse_calls):
    upright, manifest, files, n = _shards_of_oriented_photos(tmp_path, (6,))
    del manifest["orientations"]
    path = os.path.join(os.path.dirname(files[0]), tfrecords.MANIFEST)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    parse_calls.clear()
    images = _read_shards(files, n)
    assert parse_calls
    diff = np.abs(images.astype(int) - upright.astype(int)).mean(axis=(1, 2, 3))
    assert (diff < 2).all(), diff
