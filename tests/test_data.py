import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from catdog import config as C
from catdog import batching
from catdog import data
from catdog import decode
from conftest import id_folder, image_ids, make_class_folder, write_image


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


def test_shuffles_every_epoch_but_validation_is_fixed(tiny_folders):
    train_dir, val_dir = tiny_folders
    train_ds, val_ds, _ = data.build_datasets(_data_config(train_dir, val_dir))
    epoch = lambda ds: np.concatenate([y.numpy().ravel() for _, y in ds])
    first = np.concatenate([x.numpy().reshape(-1) for x, _ in train_ds])
    second = np.concatenate([x.numpy().reshape(-1) for x, _ in train_ds])
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(epoch(val_ds), epoch(val_ds))


def test_multiclass_labels_are_integers(tmp_path):
    root = make_class_folder(tmp_path / "d", classes=("a", "b", "c"), per_class=4)
    train_ds, _, idx = data.build_datasets(_data_config(root, validation_split=0.25))
    assert idx.num_classes == 3
    assert train_ds.element_spec[1].dtype == tf.int32
    assert train_ds.element_spec[1].shape.as_list() == [4]


def test_file_cache_is_keyed_by_files_and_size(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    cache = tmp_path / "cache"
    cfg = _data_config(train_dir, val_dir, cache=str(cache))
    train_ds, val_ds, _ = data.build_datasets(cfg)
    for _ in val_ds:
        pass
    files = os.listdir(cache)
    assert files and all(f.startswith("catdog-") for f in files)
    cfg.image_size = (12, 12)
    _, val_ds2, _ = data.build_datasets(cfg)
    x, _ = next(iter(val_ds2))
    assert x.shape[1:3] == (12, 12)  # a stale 16x16 cache is not reused


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


def test_batch_larger_than_data_is_an_error(tiny_folders):
    train_dir, val_dir = tiny_folders
    with pytest.raises(ValueError, match="--batch_size"):
        data.build_datasets(_data_config(train_dir, val_dir, batch_size=64))


def test_dct_scaling_reaches_the_folder_dataset(tmp_path):
    from test_decode import dct_test_images  # pylint: disable=import-outside-toplevel
    big, small, _ = dct_test_images(tmp_path)
    size = (24, 24)
    scaled = decode.decode_and_resize_scaled(tf.io.read_file(big), size).numpy()
    ds = data.build_dataset([big, small], [0, 1], num_classes=2, image_size=size,
                            batch_size=2, training=False, dct_scaling=True,
                            deterministic=True)
    np.testing.assert_array_equal(next(iter(ds))[0][0].numpy(), scaled)


def test_dct_scaling_applies_to_the_training_split_only(tmp_path):
    rng = np.random.RandomState(1)
    for name in ("a", "b"):
        smooth = tf.image.resize(rng.randint(0, 255, (6, 6, 3)).astype(np.float32),
                                 (64, 64)).numpy().astype(np.uint8)
        write_image(str(tmp_path / "d" / name / f"{name}.jpg"), smooth)
    root = str(tmp_path / "d")
    cfg = C.DataConfig(train_dir=root, val_dir=root, image_size=(16, 16), batch_size=2,
                       deterministic=True, dct_scaling=True)
    train_ds, val_ds, index = data.build_datasets(cfg, progress=False)
    read = lambda p: tf.io.read_file(p)
    exact = [decode.decode_and_resize(read(p), (16, 16)).numpy() for p in index.val.paths]
    scaled = [decode.decode_and_resize_scaled(read(p), (16, 16)).numpy()
              for p in index.train.paths]
    np.testing.assert_array_equal(next(iter(val_ds))[0].numpy(), np.stack(exact))
    got = sorted(x.tobytes() for x in next(iter(train_ds))[0].numpy())
    assert got == sorted(x.tobytes() for x in scaled)
    assert got != sorted(x.tobytes() for x in exact)


# ---------------------------------------------------------------------------
# The train/validation split of one folder.
# ---------------------------------------------------------------------------

def _listing(root, counts):
    """Paths ``root/<class>/<class>.<i>.jpg`` and labels (no files needed)."""
    paths, labels = [], []
    for label, (name, n) in enumerate(counts.items()):
        for i in range(n):
            paths.append(os.path.join(root, name, f"{name}.{i}.jpg"))
            labels.append(label)
    return paths, labels


def _sides(split):
    train, val = split
    return {**{p: "train" for p in train.paths}, **{p: "val" for p in val.paths}}


SPLIT_CASES = [({"cats": 7, "dogs": 12}, 0.2), ({"a": 30, "b": 31, "c": 5}, 0.35),
               ({"cats": 101, "dogs": 40}, 0.25), ({"cats": 3, "dogs": 17}, 0.5)]


@pytest.mark.parametrize("counts,fraction", SPLIT_CASES)
def test_validation_split_is_stratified(counts, fraction):
    """Each class holds out the same fraction of its own files (within one file),
    as ImageDataGenerator's validation_split did per class folder."""
    paths, labels = _listing("/data/train", counts)
    for seed in range(6):
        train, val = data.split_files(paths, labels, fraction, seed)
        for label, n in enumerate(counts.values()):
            n_val = val.labels.count(label)
            assert abs(n_val - fraction * n) < 1, (seed, label, n_val, n)
            assert train.labels.count(label) == n - n_val
        assert not set(train.paths) & set(val.paths)
        assert sorted(train.paths + val.paths) == sorted(paths)
        # Labels stay aligned with their files.
        truth = dict(zip(paths, labels))
        assert all(truth[p] == lab for p, lab in
                   zip(val.paths + train.paths, val.labels + train.labels))


@pytest.mark.parametrize("counts,fraction", SPLIT_CASES)
def test_validation_split_is_stable_when_one_file_comes_or_goes(counts, fraction):
    """Adding or removing one file moves at most one other file between
    training and validation, for every seed and class size tried."""
    paths, labels = _listing("/data/train", counts)
    first = list(counts)[0]
    for seed in range(5):
        before = _sides(data.split_files(paths, labels, fraction, seed))
        # One new file, in the first class (its name sorts among the others).
        added = os.path.join("/data/train", first, f"{first}.5a.jpg")
        cut = labels.count(0)
        grown = _sides(data.split_files(paths[:cut] + [added] + paths[cut:],
                                        labels[:cut] + [0] + labels[cut:], fraction, seed))
        moved = [p for p in paths if grown[p] != before[p]]
        assert len(moved) <= 1, (seed, "added", moved)
        # Each file removed in turn (a validation one and a training one at least).
        for gone in {min(p for p in paths if before[p] == "val"),
                     min(p for p in paths if before[p] == "train"), paths[-1]}:
            i = paths.index(gone)
            shrunk = _sides(data.split_files(paths[:i] + paths[i + 1:],
                                             labels[:i] + labels[i + 1:], fraction, seed))
            moved = [p for p in paths if p != gone and shrunk[p] != before[p]]
            assert len(moved) <= 1, (seed, "removed", gone, moved)


def test_validation_split_is_seeded_and_reproducible():
    paths, labels = _listing("/data/train", {"cats": 40, "dogs": 40})
    a = data.split_files(paths, labels, 0.25, 7)
    b = data.split_files(list(paths), list(labels), 0.25, 7)
    c = data.split_files(paths, labels, 0.25, 8)
    assert a[1].paths == b[1].paths and a[0].paths == b[0].paths
    assert set(a[1].paths) != set(c[1].paths)
    # Files keep the listing order inside each split.
    assert a[1].paths == [p for p in paths if p in set(a[1].paths)]


def test_validation_split_follows_paths_relative_to_the_class_folder(tmp_path):
    """Moving the whole data folder elsewhere gives the same split, file by file."""
    import shutil  # pylint: disable=import-outside-toplevel
    root = make_class_folder(tmp_path / "here" / "photos", per_class=15)
    moved = str(tmp_path / "there" / "deeper" / "photos")
    shutil.copytree(root, moved)
    rel = lambda paths, base: [os.path.relpath(p, base) for p in paths]
    for seed in (1, 2):
        a = data.index_data(_data_config(root, validation_split=0.3, seed=seed))
        b = data.index_data(_data_config(moved, validation_split=0.3, seed=seed))
        assert rel(a.val.paths, root) == rel(b.val.paths, moved)
        assert rel(a.train.paths, root) == rel(b.train.paths, moved)
        assert b.val.labels == a.val.labels


def _contexts(workers, replicas_per_worker=1):
    return [tf.distribute.InputContext(workers, w, workers * replicas_per_worker)
            for w in range(workers)]


def _worker_epochs(datasets, epochs=2):
    """[epoch][worker] -> list of per-step id lists."""
    return [[[image_ids(x) for x, _ in ds] for ds in datasets] for _ in range(epochs)]


@pytest.mark.parametrize("workers,per_class,cache", [
    (2, (17, 17), "memory"), (3, (20, 17), "none"), (2, (16, 16), "file")])
def test_worker_shares_partition_each_epoch_with_equal_steps(tmp_path, workers,
                                                             per_class, cache):
    """With an InputContext each worker gets a disjoint share in per-replica
    batches; every worker runs the same number of full steps, even when the
    shares are uneven, and leaves out at most one step's worth."""
    a, b = per_class
    labels = id_folder(tmp_path / "d", [range(0, a), range(1000, 1000 + b)])
    paths = sorted(str(p) for p in (tmp_path / "d").rglob("*.png"))
    file_labels = [labels[int(os.path.basename(p)[5:9])] for p in paths]
    batch = 4 * workers
    cache = str(tmp_path / "cache") if cache == "file" else cache
    build = lambda ctx, training: data.build_dataset(
        paths, file_labels, num_classes=2, image_size=(16, 16), batch_size=batch,
        training=training, cache=cache, input_context=ctx, split="s")
    train = [build(ctx, True) for ctx in _contexts(workers)]
    assert train[0].element_spec[0].shape.as_list() == [4, 16, 16, 3]
    for epoch in _worker_epochs(train):
        steps = [len(w) for w in epoch]
        assert len(set(steps)) == 1 and steps[0] > 0
        used = [i for w in epoch for step in w for i in step]
        assert all(len(step) == 4 for w in epoch for step in w)
        assert len(used) == len(set(used))  # nobody uses an image twice
        assert set(used) <= set(labels)
        assert len(labels) - len(used) < workers * 4 + workers  # < one step + uneven
    val = [build(ctx, False) for ctx in _contexts(workers)]
    for epoch in _worker_epochs(val):
        assert len({len(w) for w in epoch}) == 1  # same number of steps
        assert all(step for w in epoch for step in w)  # never an empty batch
        seen = [i for w in epoch for step in w for i in step]
        assert sorted(seen) == sorted(labels)  # every validation image once


def test_worker_shares_of_a_file_cache_have_their_own_files(tmp_path):
    labels = id_folder(tmp_path / "d", [range(0, 8), range(8, 16)])
    paths = sorted(str(p) for p in (tmp_path / "d").rglob("*.png"))
    cache = tmp_path / "cache"
    for ctx in _contexts(2):
        ds = data.build_dataset(paths, [0] * len(paths), num_classes=2,
                                image_size=(16, 16), batch_size=4, training=False,
                                cache=str(cache), input_context=ctx, split="v")
        assert sum(len(image_ids(x)) for x, _ in ds) == 8
    names = sorted(os.listdir(cache))
    assert any("worker0of2" in n for n in names) and any("worker1of2" in n for n in names)
    assert len(labels) == 16


def test_worker_share_too_small_for_a_step_names_batch_size(tmp_path):
    id_folder(tmp_path / "d", [range(0, 3), range(3, 6)])
    paths = sorted(str(p) for p in (tmp_path / "d").rglob("*.png"))
    with pytest.raises(ValueError, match="--batch_size.*8"):
        data.build_dataset(paths, [0] * 6, num_classes=2, image_size=(16, 16),
                           batch_size=8, training=True,
                           input_context=_contexts(2)[0])


def _spy_decodes(monkeypatch):
    """Records the id of every image catdog decodes, in decode order."""
    decoded = []
    real = decode.decode_and_resize

    def note(image):
        decoded.extend(image_ids(image.numpy()[None]))
        return 0

    def spy(contents, image_size):
        image = real(contents, image_size)
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


def test_uncached_first_batch_waits_for_a_bounded_buffer_not_the_split(tmp_path,
                                                                       monkeypatch):
    """Without an in-memory cache the default shuffle buffer of decoded images
    is bounded (data.STREAM_SHUFFLE_BUFFER): the first batch comes after about
    that many decodes, not after decoding the whole split."""
    assert data.STREAM_SHUFFLE_BUFFER == 1024  # the documented default
    monkeypatch.setattr(batching, "STREAM_SHUFFLE_BUFFER", 64, raising=False)
    n = 400
    paths, labels = _id_paths(tmp_path / "d", n)
    decoded = _spy_decodes(monkeypatch)
    ds = data.build_dataset(paths, labels, num_classes=2, image_size=(16, 16),
                            batch_size=8, training=True, cache="none")
    next(iter(ds))
    assert len(decoded) <= 64 + 100 < n, len(decoded)


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


def test_file_cache_epochs_shuffle_within_bounded_memory(tmp_path, monkeypatch):
    """A file cache freezes the order it was written in; catdog writes it in
    chunks read in a new random order every epoch, so with a small buffer an
    image's position in one epoch says little about the next."""
    n = 240
    paths, labels = _id_paths(tmp_path / "d", n)
    decoded = _spy_decodes(monkeypatch)
    build = lambda: data.build_dataset(
        paths, labels, num_classes=2, image_size=(16, 16), batch_size=8,
        training=True, cache=str(tmp_path / "cache"), shuffle_buffer=16,
        deterministic=True, seed=5)
    ds = build()
    epochs = [_epoch_ids(ds) for _ in range(3)]
    assert all(sorted(e) == list(range(n)) for e in epochs)  # each image once
    assert len(decoded) == n  # decoded once, later epochs read the cache
    for a, b in zip(epochs, epochs[1:]):
        rank_a = np.argsort(np.argsort(a))
        rank_b = np.array([b.index(i) for i in a])
        assert abs(np.corrcoef(rank_a, rank_b)[0, 1]) < 0.5
    assert [_epoch_ids(ds2) for ds2 in [build()]][0] == epochs[0]  # deterministic


def _cached_epoch(paths, labels, cache, **kw):
    kw = dict(dict(num_classes=2, image_size=(16, 16), batch_size=4, training=False,
                   cache=str(cache)), **kw)
    ds = data.build_dataset(paths, labels, **kw)
    return [(i, float(y)) for x, ys in ds for i, y in zip(image_ids(x), ys.numpy().ravel())]


def _cache_names(cache):
    return sorted({n.split(".")[0] for n in os.listdir(cache)
                   if n.endswith(".index")})


def test_file_cache_sees_a_changed_file_of_the_same_size(tmp_path):
    paths, labels = _id_paths(tmp_path / "d", 8)
    cache = tmp_path / "cache"
    before = _cached_epoch(paths, labels, cache)
    assert [i for i, _ in before] == list(range(8))
    # Same size, new bytes and mtime: the image of id 3 gets another id.
    size = os.path.getsize(paths[3])
    for new_id in range(300, 1000):
        pixels = np.zeros((16, 16, 3), np.uint8)
        pixels[..., 0], pixels[..., 1] = new_id % 256, new_id // 256
        if len(tf.io.encode_png(pixels).numpy()) == size:
            break
    write_image(paths[3], pixels)
    assert os.path.getsize(paths[3]) == size
    stat = os.stat(paths[3])
    os.utime(paths[3], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = _cached_epoch(paths, labels, cache)
    assert [i for i, _ in after] == [0, 1, 2, new_id, 4, 5, 6, 7]
    assert len(_cache_names(cache)) == 2  # a new cache, the old one untouched


def test_file_cache_key_covers_labels_decode_and_versions(tmp_path, monkeypatch):
    paths, labels = _id_paths(tmp_path / "d", 8)
    cache = tmp_path / "cache"
    _cached_epoch(paths, labels, cache)
    # Other labels for the same files (e.g. another --class_names order).
    flipped = [1 - y for y in labels]
    assert [y for _, y in _cached_epoch(paths, flipped, cache)] == [float(y) for y in flipped]
    _cached_epoch(paths, labels, cache, dct_scaling=True)
    monkeypatch.setattr(tf, "__version__", "0.0.0-other")
    _cached_epoch(paths, labels, cache)
    monkeypatch.setattr(decode, "DECODE_VERSION", -1, raising=False)
    _cached_epoch(paths, labels, cache)
    assert len(_cache_names(cache)) == 5


def _start_cache_worker(kwargs):
    from conftest import REPO  # pylint: disable=import-outside-toplevel
    import subprocess  # pylint: disable=import-outside-toplevel
    import json  # pylint: disable=import-outside-toplevel
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests", "_cache_worker.py"), json.dumps(kwargs)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2"))
    line = proc.stdout.readline()
    assert line.strip() == "caching", proc.communicate(timeout=60)[1][-3000:]
    return proc


@pytest.mark.parametrize("training", [False, True])
def test_a_run_killed_while_caching_does_not_block_the_next(tmp_path, training):
    """SIGKILL during the first epoch leaves TensorFlow's cache lockfile and a
    partial cache behind; the next run clears them and caches normally."""
    import signal  # pylint: disable=import-outside-toplevel
    paths, labels = _id_paths(tmp_path / "d", 40)
    cache = tmp_path / "cache"
    kwargs = dict(paths=paths, labels=labels, num_classes=2, image_size=[16, 16],
                  batch_size=4, training=training, cache=str(cache), shuffle_buffer=8,
                  seed=2)
    proc = _start_cache_worker(kwargs)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert any(n.endswith(".lockfile") for n in os.listdir(cache))  # what TF leaves
    kwargs["image_size"] = (16, 16)
    ds = data.build_dataset(**kwargs)
    for _ in range(2):
        assert sorted(i for x, _ in ds for i in image_ids(x)) == list(range(40))
    assert not any(n.endswith(".lockfile") or "tempstate" in n for n in os.listdir(cache))


def test_a_live_cache_writer_is_left_alone_and_the_run_uses_another_prefix(tmp_path):
    paths, labels = _id_paths(tmp_path / "d", 40)
    cache = tmp_path / "cache"
    kwargs = dict(paths=paths, labels=labels, num_classes=2, image_size=[16, 16],
                  batch_size=4, training=False, cache=str(cache))
    holder = _start_cache_worker(kwargs)
    try:
        held = sorted(os.listdir(cache))
        assert any(n.endswith(".lockfile") for n in held)
        assert [i for i, _ in _cached_epoch(paths, labels, cache)] == list(range(40))
        assert set(held) <= set(os.listdir(cache))  # the live writer's files stay
        assert len(_cache_names(cache)) == 1  # ours is complete, its is not yet
    finally:
        holder.kill()
        holder.communicate(timeout=60)
