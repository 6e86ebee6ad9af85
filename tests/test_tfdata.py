"""catdog.tfdata: every pipeline catdog builds runs with tf.data's autotuner
off (its model thread makes an epoch's end wait, see the module doc) and its
parallel stages at the CPU count, not at AUTOTUNE's cap of 16."""

import os
import pathlib

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow.core.framework import graph_pb2

from catdog import config as C
from catdog import data
from catdog import tfdata
from catdog.scan import check
from catdog.sources import tfrecord_writer
from helpers import make_class_folder, validation_copy


def _parallel_stages(ds):
    """``{op: [num_parallel_calls, ...]}`` of the parallel stages in ``ds``'s graph."""
    graph = graph_pb2.GraphDef()
    graph.ParseFromString(ds._as_serialized_graph().numpy())
    nodes = {n.name: n for n in graph.node}
    found = {}
    # Where num_parallel_calls is among each op's inputs.
    position = {"ParallelMapDatasetV2": -1, "ParallelBatchDataset": 2}
    for n in graph.node:
        if n.op in position:
            inputs = [i for i in n.input if not i.startswith("^")]
            const = nodes[inputs[position[n.op]].split(":")[0]]
            value = tf.make_ndarray(const.attr["value"].tensor)
            found.setdefault(n.op, []).append(int(value))
    return found


@pytest.fixture
def seven_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(7)), raising=False)
    return 7


def test_parallel_calls_are_the_cpus_this_process_may_use(seven_cpus):
    assert tfdata.parallel_calls() == 7


def test_folder_pipelines_run_without_the_autotuner_at_the_cpu_count(
        tiny_folders, seven_cpus):
    train_dir, val_dir = tiny_folders
    cfg = C.DataConfig(train_dir=train_dir, val_dir=val_dir, image_size=(16, 16),
                       batch_size=4)
    train_ds, val_ds, _ = data.build_datasets(cfg, progress=False)
    for ds in (train_ds, val_ds):
        assert ds.options().autotune.enabled is False
        stages = _parallel_stages(ds)
        assert stages["ParallelMapDatasetV2"] == [7]  # the decode
        assert stages["ParallelBatchDataset"] == [7]
    assert sum(len(b[1]) for b in train_ds) == 32  # and it still delivers


def test_shard_and_tfds_pipelines_run_without_the_autotuner(tmp_path, seven_cpus):
    root = make_class_folder(tmp_path / "d", per_class=6)
    out = str(tmp_path / "shards")
    tfrecord_writer.write_tfrecords(str(root), out, num_shards=2, progress=False)
    shards = C.DataConfig(train_tfrecords=os.path.join(out, "*.tfrecord"),
                          val_tfrecords=os.path.join(validation_copy(out), "*.tfrecord"),
                          image_size=(16, 16), batch_size=4)
    built = list(data.build_datasets(shards)[:2])
    with tfds.testing.mock_data(num_examples=8):
        built += list(data.build_datasets(C.DataConfig(
            tfds_name="cats_vs_dogs", image_size=(16, 16), batch_size=4))[:2])
    for ds in built:
        assert ds.options().autotune.enabled is False
        # catdog's decode; a TFDS split also has TFDS's own parse (AUTOTUNE).
        assert 7 in _parallel_stages(ds)["ParallelMapDatasetV2"]


def test_a_user_can_turn_the_autotuner_back_on_downstream(tiny_folders):
    train_dir, val_dir = tiny_folders
    train_ds, _, _ = data.build_datasets(C.DataConfig(
        train_dir=train_dir, val_dir=val_dir, image_size=(16, 16), batch_size=4),
        progress=False)
    options = tf.data.Options()
    options.autotune.enabled = True
    mine = train_ds.map(lambda x, y: (tf.cast(x, tf.float32), y)).with_options(options)
    assert mine.options().autotune.enabled is True
    assert sum(len(b[1]) for b in mine) == 32


def test_the_file_check_decodes_without_the_autotuner(tmp_path, monkeypatch):
    root = make_class_folder(tmp_path / "d", per_class=3)
    paths = sorted(str(p) for p in pathlib.Path(root).rglob("*.jpg"))
    seen = []
    real_finish = tfdata.finish

    def spy(ds, deterministic=False):
        out = real_finish(ds, deterministic)
        seen.append(out.options().autotune.enabled)
        return out

    monkeypatch.setattr(tfdata, "finish", spy)
    assert sorted(check._decode_survivors(paths, None, lambda n: None)) == list(
        range(len(paths)))
    assert seen == [False]
