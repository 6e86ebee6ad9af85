"""catdog.data: the source a config names, both splits, the batch-size check."""

import numpy as np
import pytest
import tensorflow as tf

from catdog import config as C
from catdog import data
from catdog import decode
from helpers import make_class_folder, validation_copy, write_image
from test_sources_folder import _data_config


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


def test_batch_larger_than_data_is_an_error(tiny_folders):
    train_dir, val_dir = tiny_folders
    with pytest.raises(ValueError, match="--batch_size"):
        data.build_datasets(_data_config(train_dir, val_dir, batch_size=64))


def test_dct_scaling_applies_to_the_training_split_only(tmp_path):
    rng = np.random.RandomState(1)
    for name in ("a", "b"):
        smooth = tf.image.resize(rng.randint(0, 255, (6, 6, 3)).astype(np.float32),
                                 (64, 64)).numpy().astype(np.uint8)
        write_image(str(tmp_path / "d" / name / f"{name}.jpg"), smooth)
    root = str(tmp_path / "d")
    cfg = C.DataConfig(train_dir=root, val_dir=validation_copy(root), image_size=(16, 16),
                       batch_size=2,
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
