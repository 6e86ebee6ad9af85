"""The file cache: keys, chunked epochs, killed and concurrent runs."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from catdog import data
from catdog import decode
from helpers import image_ids, write_image
from test_sources_folder import _data_config, _epoch_ids, _id_paths, _spy_decodes


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
    from helpers import REPO  # pylint: disable=import-outside-toplevel
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


def test_a_file_cache_of_other_decode_options_is_not_reused(tmp_path):
    import helpers  # pylint: disable=import-outside-toplevel
    upright = helpers.upright_pixels()
    paths = [helpers.write_oriented_jpeg(tmp_path / "d" / f"o{k}.jpg", k, upright)
             for k in (6, 8)]
    cache = tmp_path / "cache"

    def epoch(exif_orientation):
        ds = data.build_dataset(
            paths, [0, 1], num_classes=2, image_size=(48, 32), batch_size=2,
            training=False, cache=str(cache),
            decode_options=decode.DecodeOptions(exif_orientation=exif_orientation))
        return np.concatenate([x.numpy() for x, _ in ds])

    on, off = epoch(True), epoch(False)
    assert np.abs(on.astype(int) - upright.astype(int)).mean() < 2
    assert np.abs(off.astype(int) - upright.astype(int)).mean() > 20
    assert len(_cache_names(cache)) == 2


def test_a_file_cache_of_another_resize_mode_is_not_reused(tmp_path):
    rng = np.random.RandomState(0)
    paths = [write_image(str(tmp_path / "d" / f"{i}.png"),
                         rng.randint(0, 256, (16, 40, 3)).astype(np.uint8)) for i in range(2)]
    cache = tmp_path / "cache"

    def epoch(resize_mode):
        ds = data.build_dataset(
            paths, [0, 1], num_classes=2, image_size=(16, 16), batch_size=2,
            training=False, cache=str(cache),
            decode_options=decode.DecodeOptions(resize_mode=resize_mode))
        return np.concatenate([x.numpy() for x, _ in ds])

    stretch, pad = epoch("stretch"), epoch("pad")
    assert not pad[:, :4].any() and stretch[:, :4].any()  # pad: zero rows above the image
    assert len(_cache_names(cache)) == 2


def test_a_file_cache_with_whole_split_shuffle_mixes_the_split_as_memory_does(
        tmp_path, monkeypatch):
    """The cache run_pipeline shares between its stages stands in for
    --cache=memory: every epoch is shuffled over the whole split, not only
    within the bounded buffer of a --cache folder, where images cached next to
    each other stay close in every epoch."""
    from catdog import batching  # pylint: disable=import-outside-toplevel
    n, seed = 240, 5
    monkeypatch.setattr(batching, "STREAM_SHUFFLE_BUFFER", 16)
    paths, labels = _id_paths(tmp_path / "d", n)
    index = batching.DataIndex(["cats", "dogs"], batching.SplitFiles(paths, labels),
                               batching.SplitFiles(paths[:4], labels[:4]), [])
    # Images cached next to each other: the file list shuffled once with the seed.
    written = np.random.RandomState(seed).permutation(n)

    def spread(whole, folder):
        config = _data_config(str(tmp_path / "d"), batch_size=8, seed=seed,
                              deterministic=True, cache=str(tmp_path / folder),
                              whole_split_shuffle=whole)
        ds = data.build_split(config, index, "train", training=True)
        epochs = [_epoch_ids(ds) for _ in range(2)]
        assert all(sorted(e) == list(range(n)) for e in epochs)
        # Mean distance in an epoch of the 4 images cached next to each other.
        spreads = []
        for e in epochs:
            where = {i: p for p, i in enumerate(e)}
            spreads += [np.ptp([where[i] for i in written[k:k + 4]]) for k in range(0, n, 4)]
        return float(np.mean(spreads))

    bounded, whole = spread(False, "c1"), spread(True, "c2")
    assert bounded < n / 6, bounded  # the --cache folder: local mixing only
    assert whole > n / 3, whole  # uniform: 4 of 240 span ~144 positions on average
