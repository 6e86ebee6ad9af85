"""The TFRecord source: resolving shards, reading them like the folder they came from."""

import os

import numpy as np
import pytest
import tensorflow as tf

from catdog import config as C
from catdog import batching
from catdog import data
from catdog import decode
from catdog.sources import tfrecord_writer
from catdog.sources import tfrecords
from helpers import id_folder, image_ids, make_class_folder, validation_copy, write_image


def _epochs(ds, n=2):
    """Bytes of images and labels of the first ``n`` epochs, batch by batch."""
    return [[(x.numpy().tobytes(), y.numpy().tobytes()) for x, y in ds] for _ in range(n)]


def _elements(ds):
    """Every (image bytes, label) of one pass, order-free."""
    out = []
    for x, y in ds:
        out += [(a.tobytes(), float(np.ravel(b)[0])) for a, b in zip(x.numpy(), y.numpy())]
    return sorted(out)


@pytest.fixture
def folder_with_bad_files(tmp_path):
    root = make_class_folder(tmp_path / "src", per_class=9, size=20)
    (tmp_path / "src" / "cats" / "empty.jpg").write_bytes(b"")
    (tmp_path / "src" / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8not a jpeg")
    write_image(str(tmp_path / "src" / "dogs" / "big.png"),
                np.random.RandomState(3).randint(0, 255, (40, 30, 3)).astype(np.uint8))
    return root


def test_parse_example_eager_and_in_tf_data(tmp_path):
    root = make_class_folder(tmp_path / "src", per_class=2, size=12)
    out = str(tmp_path / "shards")
    tfrecord_writer.write_tfrecords(root, out, num_shards=1, progress=False)
    shard = tfrecords.resolve_shards(os.path.join(out, "*.tfrecord"))[0][0]
    records = list(tf.data.TFRecordDataset(shard))
    eager = [tfrecords.parse_example(r) for r in records]
    graph = list(tf.data.TFRecordDataset(shard).map(tfrecords.parse_example))
    assert [(a.numpy(), int(b)) for a, b in eager] == [(a.numpy(), int(b)) for a, b in graph]
    originals = {open(os.path.join(root, c, f), "rb").read()
                 for c in ("cats", "dogs") for f in os.listdir(os.path.join(root, c))}
    assert {a.numpy() for a, _ in eager} == originals  # bytes stored unchanged


def _configs(root, out_train, out_val, **kw):
    kw.setdefault("batch_size", 4)
    folder = C.DataConfig(train_dir=root, val_dir=validation_copy(root), image_size=(16, 16),
                          **kw)
    if out_val == out_train:
        out_val = validation_copy(out_val)
    shards = C.DataConfig(train_tfrecords=os.path.join(out_train, "*.tfrecord"),
                          val_tfrecords=os.path.join(out_val, "*.tfrecord"),
                          image_size=(16, 16), **kw)
    return folder, shards


def test_shards_give_the_folder_pixels(folder_with_bad_files, tmp_path):
    out = str(tmp_path / "shards")
    tfrecord_writer.write_tfrecords(folder_with_bad_files, out, num_shards=2, progress=False)
    folder_cfg, shard_cfg = _configs(folder_with_bad_files, out, out)
    f_train, f_val, f_index = data.build_datasets(folder_cfg, progress=False)
    s_train, s_val, s_index = data.build_datasets(shard_cfg)
    assert s_index.class_names == f_index.class_names
    assert len(s_index.train) == len(f_index.train) == 19
    assert {os.path.basename(s["path"]) for s in s_index.skipped} >= {"broken.jpg", "empty.jpg"}
    assert _elements(s_val) == _elements(f_val)  # same decode, same pixels
    x, y = next(iter(s_train))
    assert x.dtype == tf.uint8 and x.shape == (4, 16, 16, 3)
    assert y.dtype == tf.float32 and y.shape == (4, 1)
    assert sum(int(b[0].shape[0]) for b in s_train) == 16  # drop_remainder
    opts = s_train.options()
    assert (opts.experimental_distribute.auto_shard_policy
            == tf.data.experimental.AutoShardPolicy.FILE)


@pytest.mark.parametrize("source", ["folder", "tfrecords"])
def test_deterministic_runs_repeat_and_seeds_differ(folder_with_bad_files, tmp_path, source):
    out = str(tmp_path / "shards")
    tfrecord_writer.write_tfrecords(folder_with_bad_files, out, num_shards=3, progress=False)

    def train_ds(seed):
        folder_cfg, shard_cfg = _configs(folder_with_bad_files, out, out,
                                         deterministic=True, seed=seed)
        cfg = folder_cfg if source == "folder" else shard_cfg
        return data.build_datasets(cfg, progress=False)[0]

    first, again, other = _epochs(train_ds(5)), _epochs(train_ds(5)), _epochs(train_ds(6))
    assert first == again
    assert first[0] != first[1]  # reshuffled every epoch
    assert first != other


def test_reader_errors_name_the_flag_and_value(tmp_path):
    root = make_class_folder(tmp_path / "src", per_class=2, size=12)
    with pytest.raises(ValueError, match="train_tfrecords=.*nothing"):
        tfrecords.resolve_shards(str(tmp_path / "nothing-*.tfrecord"))
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "x.tfrecord").write_bytes(b"")
    with pytest.raises(ValueError, match="No manifest.json.*build_tfrecords.py"):
        tfrecords.resolve_shards(str(lonely / "*.tfrecord"), "val_tfrecords")
    cfg = C.Config(data=C.DataConfig(train_tfrecords="a*"),
                   train=C.TrainConfig(model_dir=str(tmp_path / "m")))
    with pytest.raises(ValueError, match="--val_tfrecords.*val_tfrecords=''"):
        cfg.validate()
    cfg.data.val_tfrecords, cfg.data.train_dir = "b*", root
    with pytest.raises(ValueError, match="exactly one input source"):
        cfg.validate()
    # Validation shards with other classes are refused.
    tfrecord_writer.write_tfrecords(root, str(tmp_path / "t"), num_shards=1, progress=False)
    tfrecord_writer.write_tfrecords(root, str(tmp_path / "v"), num_shards=1,
                                    class_names=["dogs", "cats"], progress=False)
    bad = C.DataConfig(train_tfrecords=str(tmp_path / "t" / "*.tfrecord"),
                       val_tfrecords=str(tmp_path / "v" / "*.tfrecord"))
    with pytest.raises(ValueError, match="same classes"):
        data.index_source(bad)


def test_split_record_lists_the_shards_and_fine_tuning_needs_the_same(
        folder_with_bad_files, tmp_path):
    out_train, out_val = str(tmp_path / "st"), str(tmp_path / "sv")
    tfrecord_writer.write_tfrecords(folder_with_bad_files, out_train, num_shards=2, progress=False)
    tfrecord_writer.write_tfrecords(folder_with_bad_files, out_val, num_shards=1, progress=False)
    _, cfg = _configs(folder_with_bad_files, out_train, out_val)
    index = data.index_source(cfg)
    record = data.split_record(cfg, index)
    assert record["source"] == "tfrecords" and record["class_names"] == ["cats", "dogs"]
    assert record["train"] == sorted(str(p) for p in (tmp_path / "st").glob("*.tfrecord"))
    assert record["val"] == [str(p) for p in (tmp_path / "sv").glob("*.tfrecord")]
    assert record["train_examples"] == record["val_examples"] == 19
    again = data.index_from_split(cfg, record, "the stage-3 run")
    assert again.train.source == record["train"] and len(again.val) == 19
    # A run that trained on the first shard only: the second is new since.
    earlier = dict(record, train=record["train"][:1],
                   train_examples=record["train_examples"] - 9)
    with pytest.raises(ValueError, match=r"1 shard file added.*" +
                       os.path.basename(record["train"][1])):
        data.index_from_split(cfg, earlier, "the stage-3 run")


@pytest.mark.parametrize("num_shards", [1, 3, 4])
def test_worker_shares_of_shards_partition_each_epoch(tmp_path, num_shards):
    """With an InputContext each worker reads its own shard files (or, with
    fewer files than workers, its own records), runs as many steps as the
    other, and validation evaluates every record once."""
    labels = id_folder(tmp_path / "src", [range(0, 13), range(100, 113)])
    out = str(tmp_path / "shards")
    tfrecord_writer.write_tfrecords(str(tmp_path / "src"), out, num_shards=num_shards,
                                    progress=False)
    files, _, n = tfrecords.resolve_shards(os.path.join(out, "*.tfrecord"))
    contexts = [tf.distribute.InputContext(2, w, 2) for w in range(2)]
    build = lambda ctx, training: tfrecords.build_tfrecord_dataset(
        files, num_classes=2, image_size=(16, 16), batch_size=4, training=training,
        num_examples=n, input_context=ctx)
    train = [build(ctx, True) for ctx in contexts]
    for _ in range(2):
        epoch = [[image_ids(x) for x, _ in ds] for ds in train]
        assert len(epoch[0]) == len(epoch[1]) > 0
        used = [i for w in epoch for step in w for i in step]
        assert len(used) == len(set(used)) and set(used) <= set(labels)
    val = [build(ctx, False) for ctx in contexts]
    epoch = [[image_ids(x) for x, _ in ds] for ds in val]
    assert len(epoch[0]) == len(epoch[1]) and all(s for w in epoch for s in w)
    assert sorted(i for w in epoch for s in w for i in s) == sorted(labels)
    assert (train[0].options().experimental_distribute.auto_shard_policy
            == tf.data.experimental.AutoShardPolicy.OFF)


def test_shard_files_are_dealt_by_example_count():
    owned, load = tfrecords._assign_files(["a", "b", "c", "d", "e"], [10, 10, 9, 9, 1], 2)
    assert load == [20, 19] and sorted(sum(owned, [])) == ["a", "b", "c", "d", "e"]
    assert owned == [["a", "c", "e"], ["b", "d"]]  # largest first, to the lighter worker


@pytest.mark.parametrize("cache", ["none", "file"])
def test_shards_without_memory_cache_shuffle_in_a_bounded_buffer(tmp_path, monkeypatch,
                                                                 cache):
    """Without an in-memory cache the first batch comes after about a buffer
    of decodes, not the whole split; a file cache is written per shard file
    and every epoch still uses each record once in a new order."""
    monkeypatch.setattr(batching, "STREAM_SHUFFLE_BUFFER", 16, raising=False)
    labels = id_folder(tmp_path / "src", [range(0, 60), range(100, 160)])
    out = str(tmp_path / "shards")
    tfrecord_writer.write_tfrecords(str(tmp_path / "src"), out, num_shards=4, progress=False)
    files, _, n = tfrecords.resolve_shards(os.path.join(out, "*.tfrecord"))
    decoded = []
    real = decode.decode_and_resize

    def spy(contents, image_size, *options):
        image = real(contents, image_size, *options)
        done = tf.py_function(lambda: decoded.append(1) or 0, [], tf.int64)
        with tf.control_dependencies([done]):
            return tf.identity(image)

    monkeypatch.setattr(decode, "decode_and_resize", spy)
    cache_dir = tmp_path / "cache"
    ds = tfrecords.build_tfrecord_dataset(
        files, num_classes=2, image_size=(16, 16), batch_size=4, training=True,
        num_examples=n, cache=str(cache_dir) if cache == "file" else "none")
    next(iter(ds))
    assert len(decoded) <= 16 + 50 < n, len(decoded)
    epochs = [[i for x, _ in ds for i in image_ids(x)] for _ in range(2)]
    assert all(sorted(e) == sorted(labels) for e in epochs)  # 120 = 30 batches of 4
    assert epochs[0] != epochs[1]
    if cache == "file":
        assert len([f for f in os.listdir(cache_dir) if f.endswith(".index")]) == 4


def test_file_cache_of_rebuilt_shards_is_not_reused(tmp_path):
    """Shards rebuilt under the same names (other images) get a new cache."""
    out = str(tmp_path / "shards")
    cache = str(tmp_path / "cache")

    def cached_ids(ids):
        root = tmp_path / f"src{ids[0]}"
        id_folder(root, [ids[: len(ids) // 2], ids[len(ids) // 2:]])
        tfrecord_writer.write_tfrecords(str(root), out, num_shards=2, prefix="train",
                                        progress=False)
        files, _, n = tfrecords.resolve_shards(os.path.join(out, "*.tfrecord"))
        ds = tfrecords.build_tfrecord_dataset(files, num_classes=2, image_size=(16, 16),
                                              batch_size=4, training=False,
                                              num_examples=n, cache=cache)
        return sorted(i for x, _ in ds for i in image_ids(x))

    assert cached_ids(list(range(0, 8))) == list(range(0, 8))
    assert cached_ids(list(range(50, 58))) == list(range(50, 58))

