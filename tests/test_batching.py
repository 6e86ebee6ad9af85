"""The batching tail every source shares: labels, worker shares, bounded shuffle."""

import os

import pytest
import tensorflow as tf

from catdog import batching
from catdog import data
from helpers import id_folder, image_ids
from test_sources_folder import _id_paths, _spy_decodes


def test_labels_are_a_float_column_for_two_classes_and_int_for_more():
    """One encoding for every source: sigmoid heads get float (N, 1), softmax
    heads int32 (N,), one label alone (1,) or ()."""
    two = batching.encode_labels([0, 1, 1], 2)
    assert two.dtype == tf.float32 and two.shape.as_list() == [3, 1]
    assert two.numpy().ravel().tolist() == [0.0, 1.0, 1.0]
    one = batching.encode_labels(tf.constant(1, tf.int64), 2)
    assert one.dtype == tf.float32 and one.shape.as_list() == [1]
    many = batching.encode_labels([0, 2, 1], 3)
    assert many.dtype == tf.int32 and many.numpy().tolist() == [0, 2, 1]
    assert batching.encode_labels(tf.constant(2, tf.int64), 3).shape.as_list() == []


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
