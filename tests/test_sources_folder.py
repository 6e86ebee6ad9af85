"""The folder source: indexing a class-folder tree and reading its files."""

import os
import shutil
import unicodedata

import numpy as np
import pytest
import tensorflow as tf

from catdog import config as C
from catdog import data
from catdog import decode
import helpers
from helpers import id_folder, image_ids, make_class_folder, write_image


def _data_config(train_dir, val_dir="", **kw):
    kw.setdefault("batch_size", 4)
    return C.DataConfig(train_dir=train_dir, val_dir=val_dir, image_size=(16, 16), **kw)


def test_index_follows_keras_class_semantics(tmp_path):
    root = tmp_path / "d"
    make_class_folder(root, classes=("dogs", "cats"), per_class=3)
    write_image(str(root / "cats" / "nested" / "deep.jpg"),
                np.zeros((8, 8, 3), np.uint8))
    (root / "cats" / ".DS_Store").write_bytes(b"\0\1")
    (root / "dogs" / "Thumbs.db").write_bytes(b"\0\1")
    idx = data.index_data(_data_config(str(root), validation_split=0.25))
    assert idx.class_names == ["cats", "dogs"]  # alphanumeric
    all_paths = idx.train.paths + idx.val.paths
    assert len(all_paths) == 7  # nested counts, junk ignored
    assert any(p.endswith("deep.jpg") for p in all_paths)
    labels = dict(zip(all_paths, idx.train.labels + idx.val.labels))
    assert all(labels[p] == (0 if "/cats/" in p else 1) for p in all_paths)
    explicit = data.index_data(_data_config(str(root), validation_split=0.25,
                                            class_names=("dogs", "cats")))
    assert explicit.class_names == ["dogs", "cats"]


def test_validation_split_is_reproducible_and_disjoint(tmp_path):
    root = make_class_folder(tmp_path / "d", per_class=10)
    a = data.index_data(_data_config(root, validation_split=0.3, seed=7))
    b = data.index_data(_data_config(root, validation_split=0.3, seed=7))
    c = data.index_data(_data_config(root, validation_split=0.3, seed=8))
    assert a.train.paths == b.train.paths and a.val.paths == b.val.paths
    assert not set(a.train.paths) & set(a.val.paths)
    assert len(a.val) == 6 and len(a.train) == 14
    assert a.val.paths != c.val.paths


def test_bad_files_are_skipped_reported_and_untouched(tmp_path):
    root = make_class_folder(tmp_path / "d", per_class=5)
    empty = tmp_path / "d" / "cats" / "empty.jpg"
    empty.write_bytes(b"")
    html = tmp_path / "d" / "dogs" / "page.jpg"
    html.write_bytes(b"<!DOCTYPE html><html>not an image</html>")
    idx = data.index_data(_data_config(root, validation_split=0.2))
    skipped = {s["path"]: s["reason"] for s in idx.skipped}
    assert set(skipped) == {str(empty), str(html)}
    assert all(skipped.values())
    assert str(empty) not in idx.train.paths + idx.val.paths
    assert empty.exists() and html.read_bytes().startswith(b"<!DOCTYPE")
    # And the pipeline runs over every remaining file without error.
    train_ds, val_ds, _ = data.build_datasets(_data_config(root, validation_split=0.2),
                                              idx)
    assert sum(int(x.shape[0]) for x, _ in val_ds) == len(idx.val)


def test_batches_are_uint8_static_and_drop_remainder(tiny_folders):
    train_dir, val_dir = tiny_folders
    cfg = _data_config(train_dir, val_dir, batch_size=5)
    train_ds, val_ds, idx = data.build_datasets(cfg)
    assert len(idx.train) == 32 and len(idx.val) == 12
    assert train_ds.element_spec[0].shape.as_list() == [5, 16, 16, 3]
    assert train_ds.element_spec[0].dtype == tf.uint8
    assert train_ds.element_spec[1].shape.as_list() == [5, 1]
    assert train_ds.element_spec[1].dtype == tf.float32
    sizes = [int(x.shape[0]) for x, _ in train_ds]
    assert sizes == [5] * 6  # 32 // 5, remainder dropped
    val_sizes = [int(x.shape[0]) for x, _ in val_ds]
    assert sum(val_sizes) == 12  # validation keeps every image


def test_clear_errors_for_bad_folders(tmp_path):
    with pytest.raises(ValueError, match="missing_dir"):
        data.index_data(_data_config(str(tmp_path / "missing_dir")))
    one = make_class_folder(tmp_path / "one", classes=("cats",), per_class=3)
    with pytest.raises(ValueError, match="at least 2"):
        data.index_data(_data_config(one))
    root = make_class_folder(tmp_path / "d", per_class=3)
    with pytest.raises(ValueError, match="horses"):
        data.index_data(_data_config(root, class_names=("cats", "horses")))
    bad = make_class_folder(tmp_path / "bad", per_class=3)
    for f in os.listdir(os.path.join(bad, "dogs")):
        with open(os.path.join(bad, "dogs", f), "wb") as fh:
            fh.write(b"")
    with pytest.raises(ValueError, match="dogs"):
        data.index_data(_data_config(bad))


def test_dct_scaling_reaches_the_folder_dataset(tmp_path):
    from test_decode import dct_test_images  # pylint: disable=import-outside-toplevel
    big, small, _ = dct_test_images(tmp_path)
    size = (24, 24)
    scaled = decode.decode_and_resize_scaled(tf.io.read_file(big), size).numpy()
    ds = data.build_dataset([big, small], [0, 1], num_classes=2, image_size=size,
                            batch_size=2, training=False, dct_scaling=True,
                            deterministic=True)
    np.testing.assert_array_equal(next(iter(ds))[0][0].numpy(), scaled)


def _spy_decodes(monkeypatch):
    """Records the id of every image catdog decodes, in decode order."""
    decoded = []
    real = decode.decode_and_resize

    def note(image):
        decoded.extend(image_ids(image.numpy()[None]))
        return 0

    def spy(contents, image_size, *options):
        image = real(contents, image_size, *options)
        done = tf.py_function(note, [image], tf.int64)
        with tf.control_dependencies([done]):
            return tf.identity(image)

    monkeypatch.setattr(decode, "decode_and_resize", spy)
    return decoded


def _id_paths(root, n):
    labels = id_folder(root, [range(0, n // 2), range(n // 2, n)])
    paths = sorted(str(p) for p in root.rglob("*.png"))
    return paths, [labels[int(os.path.basename(p)[5:9])] for p in paths]


def _epoch_ids(ds):
    return [i for x, _ in ds for i in image_ids(x)]


def _sequential(ds):
    """The same pipeline on one thread: parallel maps then run (and a decode
    spy records) the elements in their input order."""
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def test_uncached_paths_are_shuffled_before_decoding_every_epoch(tmp_path, monkeypatch):
    paths, labels = _id_paths(tmp_path / "d", 40)
    decoded = _spy_decodes(monkeypatch)
    build = lambda: data.build_dataset(paths, labels, num_classes=2, image_size=(16, 16),
                                       batch_size=4, training=True, cache="none",
                                       deterministic=True, seed=3)
    ds = _sequential(build())
    first, second = _epoch_ids(ds), _epoch_ids(ds)
    assert sorted(first) == sorted(second) == list(range(40))  # each image once
    order1, order2 = decoded[:40], decoded[40:]
    assert sorted(order1) == sorted(order2) == list(range(40))
    assert order1 != sorted(order1)  # the file list is shuffled before the decode
    assert order1 != order2  # ... again every epoch
    assert first != second
    assert _epoch_ids(build()) == first  # --deterministic: same batches


@pytest.mark.parametrize("exif_orientation", [True, False])
def test_training_and_validation_decode_exif_orientation_as_configured(
        tmp_path, exif_orientation):
    upright = helpers.upright_pixels()
    for split in ("train", "val"):
        for k in range(1, 9):
            helpers.write_oriented_jpeg(tmp_path / split / "a" / f"o{k}.jpg", k, upright)
            helpers.write_oriented_jpeg(tmp_path / split / "b" / f"o{k}.jpg", k, upright)
    cfg = C.DataConfig(train_dir=str(tmp_path / "train"), val_dir=str(tmp_path / "val"),
                       image_size=(48, 32), batch_size=4, exif_orientation=exif_orientation)
    train_ds, val_ds, _ = data.build_datasets(cfg, progress=False)
    for name, ds in (("train", train_ds), ("val", val_ds)):
        images = np.concatenate([x.numpy() for x, _ in ds])
        diff = np.abs(images.astype(int) - upright.astype(int)).mean(axis=(1, 2, 3))
        upright_count = int(np.sum(diff < 2))
        assert upright_count == (16 if exif_orientation else 2), (name, diff)


@pytest.fixture
def parse_calls(monkeypatch):
    """Counts the graph EXIF parses traced by catdog's decode (once per trace)."""
    calls = []
    real = decode.exif_orientation

    def spy(contents):
        calls.append(1)
        return real(contents)

    monkeypatch.setattr(decode, "exif_orientation", spy)
    return calls


def _decoded(ds):
    return np.concatenate([x.numpy() for x, _ in ds])


def _each_decoded(paths, size):
    return np.stack([decode.decode_and_resize(tf.io.read_file(p), size).numpy()
                     for p in paths])


@pytest.mark.parametrize("turned", [(), (6,), (3, 8)])
def test_checked_orientations_skip_the_graph_parse_with_the_same_pixels(
        tmp_path, parse_calls, turned):
    from catdog import scan
    upright = helpers.upright_pixels()
    paths = [helpers.write_oriented_jpeg(tmp_path / f"u{i}.jpg", 1, upright) for i in range(3)]
    paths += [helpers.write_oriented_jpeg(tmp_path / f"t{k}.jpg", k, upright) for k in turned]
    checks = scan.check_files(paths, use_cache=False)
    assert [c.exif_orientation for c in checks] == [1, 1, 1, *turned]
    expected = _each_decoded(paths, (48, 32))
    parse_calls.clear()
    ds = data.build_dataset(paths, [0] * len(paths), num_classes=2, image_size=(48, 32),
                            batch_size=2, training=False, cache="none")
    assert parse_calls == []  # every orientation came from the check
    np.testing.assert_array_equal(_decoded(ds), expected)


def test_unchecked_or_replaced_files_are_parsed_in_the_graph(tmp_path, parse_calls,
                                                              monkeypatch):
    from catdog import scan
    from catdog.scan import check as check_lib
    upright = helpers.upright_pixels()
    paths = [helpers.write_oriented_jpeg(tmp_path / f"u{i}.jpg", 1, upright) for i in range(3)]
    scan.check_files(paths, use_cache=False)
    # Replaced after the check by a photo stored turned (its size changes):
    # the check's orientation (1) is stale and must not be used.
    helpers.write_oriented_jpeg(paths[1], 6, upright)
    assert scan.known_orientations(paths) is None
    parse_calls.clear()
    build = lambda: data.build_dataset(paths, [0] * 3, num_classes=2, image_size=(48, 32),
                                       batch_size=3, training=False, cache="none")
    images = _decoded(build())
    assert parse_calls  # parsed again
    np.testing.assert_array_equal(images, _each_decoded(paths, (48, 32)))
    diff = np.abs(images.astype(int) - upright.astype(int)).mean(axis=(1, 2, 3))
    assert (diff < 2).all()  # the replaced photo is turned upright too
    # Files no check of this process has seen: parsed as well.
    monkeypatch.setattr(check_lib, "_ORIENTATIONS", {})
    parse_calls.clear()
    np.testing.assert_array_equal(_decoded(build()), images)
    assert parse_calls


def _folder_with_a_one_image_class(tmp_path):
    root = tmp_path / "d"
    make_class_folder(root, classes=("cats", "dogs"), per_class=6)
    write_image(str(root / "zsolo" / "only.jpg"), np.full((16, 16, 3), 200, np.uint8))
    return str(root)


def test_a_split_that_leaves_a_class_out_of_training_is_refused(tmp_path):
    """A class whose every image is held out for validation would train a
    model that never saw it: refused, naming the class and the flags."""
    root = _folder_with_a_one_image_class(tmp_path)
    with pytest.raises(ValueError) as e:
        data.index_data(_data_config(root, validation_split=0.5))
    message = str(e.value)
    assert "'zsolo'" in message and "--validation_split" in message
    assert "--val_dir" in message and "cats" not in message


def test_a_split_that_leaves_a_class_out_of_validation_warns(tmp_path, caplog):
    root = _folder_with_a_one_image_class(tmp_path)
    with caplog.at_level("WARNING"):
        index = data.index_data(_data_config(root, validation_split=0.25))
    assert 2 not in index.val.labels and 2 in index.train.labels
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("'zsolo'" in m and "validation" in m for m in warned), warned


@pytest.mark.parametrize("layout", ["same", "nested", "linked"])
def test_validation_images_that_are_training_images_are_refused(tmp_path, layout):
    """Validation figures over images the model trains on would be wrong:
    the same folder, a validation folder inside the training one, or a
    validation file that is a link to a training file are refused."""
    root = make_class_folder(tmp_path / "train", per_class=4)
    if layout == "same":
        val_dir = root
    elif layout == "nested":
        val_dir = make_class_folder(tmp_path / "train" / "cats" / "held", per_class=2)
    else:
        val_dir = make_class_folder(tmp_path / "valid", per_class=2, seed=5)
        os.symlink(os.path.join(root, "dogs", "dogs_000.jpg"),
                   os.path.join(val_dir, "dogs", "alias.jpg"))
    with pytest.raises(ValueError) as e:
        data.index_data(_data_config(root, val_dir))
    message = str(e.value)
    assert "--val_dir" in message and "--train_dir" in message
    assert "also training images" in message


def test_separate_training_and_validation_folders_are_accepted(tmp_path):
    root = make_class_folder(tmp_path / "train", per_class=4)
    val_dir = make_class_folder(tmp_path / "valid", per_class=2, seed=5)
    index = data.index_data(_data_config(root, val_dir))
    assert (len(index.train), len(index.val)) == (8, 4)


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_a_validation_image_copied_from_the_training_folder_is_reported(tmp_path, caplog):
    """A copy has its own path, so only its bytes show that the validation
    figures would count a training image as unseen."""
    root = make_class_folder(tmp_path / "train", per_class=4, seed=1)
    val_dir = make_class_folder(tmp_path / "valid", per_class=3, seed=2)
    source = os.path.join(root, "dogs", "dogs_002.jpg")
    copy = os.path.join(val_dir, "cats", "renamed.jpg")
    shutil.copyfile(source, copy)
    cfg = _data_config(root, val_dir)
    with caplog.at_level("WARNING"):
        index = data.index_data(cfg)
    assert index.copies == [[source, copy]]
    warned = [m for m in _warnings(caplog) if "byte-identical" in m]
    assert len(warned) == 1 and "1 of the 7 validation images" in warned[0]
    assert "--val_dir" in warned[0] and "--train_dir" in warned[0]
    assert repr(copy) in warned[0] and f"--other_dirs={val_dir}" in warned[0]
    assert data.split_record(cfg, index)["identical_across_splits"] == [[source, copy]]
    # A rerun from the run's split.json finds them again.
    again = data.index_from_split(cfg, data.split_record(cfg, index), "the run",
                                  progress=False)
    assert again.copies == [[source, copy]]


def test_copies_that_a_held_out_split_puts_on_both_sides_are_reported(tmp_path, caplog):
    root = make_class_folder(tmp_path / "train", per_class=8, seed=1)
    original = os.path.join(root, "cats", "cats_000.jpg")
    copies = [os.path.join(root, "cats", f"again_{i}.jpg") for i in range(3)]
    for copy in copies:
        shutil.copyfile(original, copy)
    with caplog.at_level("WARNING"):
        index = data.index_data(_data_config(root, validation_split=0.5))
    group = {original, *copies}
    in_train = sorted(group & set(index.train.paths))
    in_val = sorted(group & set(index.val.paths))
    assert in_train and in_val  # this seed splits the four copies
    assert index.copies == [[in_train[0], in_val[0]]]
    warned = [m for m in _warnings(caplog) if "byte-identical" in m]
    assert len(warned) == 1 and f"{len(in_val)} of the" in warned[0]
    assert "--validation_split held out of --train_dir" in warned[0]


def test_distinct_images_are_not_reported_as_copies(tmp_path, caplog):
    root = make_class_folder(tmp_path / "train", per_class=4, seed=1)
    val_dir = make_class_folder(tmp_path / "valid", per_class=3, seed=2)
    cfg = _data_config(root, val_dir)
    with caplog.at_level("WARNING"):
        index = data.index_data(cfg)
    assert index.copies == []
    assert not [m for m in _warnings(caplog) if "byte-identical" in m]
    assert "identical_across_splits" not in data.split_record(cfg, index)


def _nfd(text):
    return unicodedata.normalize("NFD", text)


def test_class_folders_in_another_unicode_form_are_the_same_classes(tmp_path):
    """A training folder unpacked from a macOS archive has NFD folder names;
    a validation folder made elsewhere, and names typed in --class_names,
    are NFC. They look the same and are the same classes."""
    train = make_class_folder(tmp_path / "train", classes=(_nfd("café"), _nfd("thé")),
                              per_class=4, seed=1)
    val = make_class_folder(tmp_path / "valid", classes=("café", "thé"), per_class=2, seed=2)
    index = data.index_data(_data_config(train, val))
    assert [unicodedata.normalize("NFC", n) for n in index.class_names] == ["café", "thé"]
    assert sorted(index.val.labels) == [0, 0, 1, 1] and len(index.train) == 8
    assert all("thé" in unicodedata.normalize("NFC", p)
               for p, l in zip(index.val.paths, index.val.labels) if l == 1)
    given = data.index_data(_data_config(train, validation_split=0.5,
                                         class_names=("thé", "café")))
    assert len(given.train) + len(given.val) == 8
    assert given.class_names == ["thé", "café"]


def test_two_class_folders_that_differ_only_in_unicode_form_are_refused(tmp_path):
    root = make_class_folder(tmp_path / "d", classes=("café", _nfd("café"), "thé"),
                             per_class=2)
    with pytest.raises(ValueError, match="Unicode form"):
        data.index_data(_data_config(root, validation_split=0.5))
