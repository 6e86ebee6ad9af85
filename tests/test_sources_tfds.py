import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from catdog import config as C
from catdog import data
from catdog.sources import tfds as tfds_source
from catdog import train


def _cfg(**kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("image_size", (16, 16))
    return C.DataConfig(tfds_name="cats_vs_dogs", **kw)


def _epochs(ds, n=2):
    return [[(x.numpy().tobytes(), y.numpy().tobytes()) for x, y in ds] for _ in range(n)]


def test_index_and_batches_from_mock_cats_vs_dogs():
    with tfds.testing.mock_data(num_examples=12):
        train_ds, val_ds, index = data.build_datasets(_cfg())
        assert index.class_names == ["cat", "dog"]
        assert len(index.train) == 12 and len(index.val) == 12
        assert index.train.source == "train[:80%]" and index.val.source == "train[80%:]"
        x, y = next(iter(train_ds))
        assert x.dtype == tf.uint8 and x.shape == (4, 16, 16, 3)
        assert y.dtype == tf.float32 and y.shape == (4, 1)
        assert sum(int(b[0].shape[0]) for b in train_ds) == 12
        assert set(np.unique(np.concatenate([b[1].numpy() for b in val_ds]))) <= {0.0, 1.0}


def test_same_decode_eagerly_and_in_the_pipeline():
    with tfds.testing.mock_data(num_examples=5):
        builder = tfds_source.load_builder("cats_vs_dogs")
        raw = list(builder.as_dataset(split="train", decoders={
            "image": tfds.decode.SkipDecoding()}))
        eager = [data.decode_and_resize(e["image"], (16, 16)).numpy() for e in raw]
        cfg = _cfg(deterministic=True, val_split="train", cache="none")
        _, val_ds, _ = data.build_datasets(cfg)
        piped = np.concatenate([x.numpy() for x, _ in val_ds])
        np.testing.assert_array_equal(piped, np.stack(eager))
        labels = np.concatenate([y.numpy() for _, y in val_ds]).ravel()
        np.testing.assert_array_equal(labels, [float(e["label"]) for e in raw])


def test_deterministic_runs_repeat_and_seeds_differ():
    with tfds.testing.mock_data(num_examples=16):
        run = lambda seed: _epochs(data.build_datasets(_cfg(deterministic=True,
                                                            seed=seed))[0])
        first, again, other = run(3), run(3), run(4)
    assert first == again
    assert first != other


def test_missing_data_says_how_to_provide_it(tmp_path, monkeypatch):
    def offline(self, *args, **kwargs):
        raise ConnectionError("no network")
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(ValueError, match=r"tfds build cats_vs_dogs.*--tfds_data_dir") as e:
        tfds_source.load_builder("cats_vs_dogs", str(tmp_path))
    assert str(tmp_path) in str(e.value) and "no network" in str(e.value)
    with pytest.raises(ValueError, match="tfds_name='no_such_dataset_xyz'"):
        tfds_source.load_builder("no_such_dataset_xyz", str(tmp_path))
    with pytest.raises(ValueError, match="not an image-classification dataset"):
        tfds_source.load_builder("imdb_reviews", str(tmp_path))


def test_class_names_must_match():
    with tfds.testing.mock_data(num_examples=4):
        with pytest.raises(ValueError, match="class_names=dog,cat"):
            data.index_source(_cfg(class_names=("dog", "cat")))


def test_train_run_end_to_end_on_mock_tfds(tmp_path):
    config = C.quick(C.baseline())
    config.data = _cfg(batch_size=4, image_size=(32, 32))
    config.train.epochs = 1
    config.train.verbose = 0
    config.train.model_dir = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=8):
        result = train.run(config, progress=False)
    assert result.metrics["train_examples"] == 8
    assert result.metrics["class_names"] == ["cat", "dog"]
    assert os.path.isfile(os.path.join(config.train.model_dir, "model.keras"))
    with open(os.path.join(config.train.model_dir, "split.json")) as f:
        split = json.load(f)
    assert (split["source"], split["tfds_name"]) == ("tfds", "cats_vs_dogs")
    assert (split["train"], split["val"]) == (["train[:80%]"], ["train[80%:]"])
    assert split["train_examples"] == 8 and split["class_names"] == ["cat", "dog"]


def test_worker_shares_partition_the_split():
    """Each worker keeps its own records of the same fixed-order read (before
    decoding): the shares are disjoint, cover the split and run equal steps."""
    with tfds.testing.mock_data(num_examples=21):
        cfg = _cfg(batch_size=4, cache="none")
        index = data.index_source(cfg)
        whole = [x.tobytes() for b, _ in data.build_split(cfg, index, "train", training=False)
                 for x in b.numpy()]
        contexts = [tf.distribute.InputContext(2, w, 2) for w in range(2)]
        for training in (True, False):
            shares = [[[x.tobytes() for x in b.numpy()] for b, _ in
                       data.build_split(cfg, index, "train", training, input_context=c)]
                      for c in contexts]
            assert len(shares[0]) == len(shares[1])
            seen = [x for w in shares for step in w for x in step]
            assert len(seen) == len(set(seen)) and set(seen) <= set(whole)
            if not training:
                assert sorted(seen) == sorted(whole)


def test_tfds_file_cache_is_keyed_by_the_dataset_version(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cfg = _cfg(cache=str(cache))
    with tfds.testing.mock_data(num_examples=6):
        index = data.index_source(cfg)
        for version in ("4.0.1", "9.9.9"):
            builder = tfds_source.load_builder("cats_vs_dogs")
            monkeypatch.setattr(type(builder.info), "version",
                                property(lambda self, v=version: v), raising=False)
            ds = data.build_split(cfg, index, "val", training=False)
            assert sum(int(x.shape[0]) for x, _ in ds) == 6
    assert len([n for n in os.listdir(cache) if n.endswith(".index")]) == 2
