"""--data_service: the training split through a tf.data service on loopback.

One dispatcher and two workers run in this process (tf.data service
servers on free loopback ports); validation stays local.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from catdog import config as C
from catdog import data
from catdog import data_service
from catdog import errors
from catdog import train
from helpers import REPO, free_ports, id_folder, image_ids, make_class_folder


@pytest.fixture(scope="module")
def service():
    """``grpc://127.0.0.1:PORT`` of a dispatcher with two workers."""
    d_port, *w_ports = free_ports(3)
    # Jobs of finished epochs are collected quickly, so the workers stop at once.
    dispatcher = data_service.start_dispatcher(d_port, job_gc_check_interval_ms=500,
                                               job_gc_timeout_ms=500)
    workers = [data_service.start_worker(f"127.0.0.1:{d_port}", port, host="127.0.0.1")
               for port in w_ports]
    yield f"grpc://127.0.0.1:{d_port}"
    for server in workers + [dispatcher]:
        server.stop()


def _data_config(train_dir, val_dir, service, batch_size=8, **extra):
    c = C.DataConfig(train_dir=train_dir, val_dir=val_dir, image_size=(16, 16),
                     batch_size=batch_size, data_service=service)
    for k, v in extra.items():
        setattr(c, k, v)
    return c


def _epoch_ids(ds):
    ids, shapes = [], set()
    for images, _ in ds:
        ids += image_ids(images)
        shapes.add(tuple(images.shape))
    return ids, shapes


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_every_training_example_once_per_epoch_through_the_service(service, tmp_path, cache):
    train_ids = id_folder(tmp_path / "train", (range(0, 20), range(100, 124)))  # 44 images
    id_folder(tmp_path / "valid", (range(500, 505), range(600, 605)))
    c = _data_config(str(tmp_path / "train"), str(tmp_path / "valid"), service, cache=cache)
    train_ds, val_ds, index = data.build_datasets(c, progress=False)
    assert len(index.train) == 44
    # 44 images in batches of 8: 5 full batches per epoch, known to Keras.
    assert int(train_ds.cardinality()) == 5
    for _ in range(2):
        ids, shapes = _epoch_ids(train_ds)
        assert shapes == {(8, 16, 16, 3)}
        assert len(ids) == 40 and len(set(ids)) == 40, sorted(ids)
        assert set(ids) <= set(train_ids)
    # Validation is local and exact: every example once, in file order.
    val = [i for images, _ in val_ds for i in image_ids(images)]
    assert val == [500, 501, 502, 503, 504, 600, 601, 602, 603, 604]


def test_an_epoch_of_a_whole_number_of_batches_is_the_training_split(service, tmp_path):
    train_ids = id_folder(tmp_path / "train", (range(0, 24), range(100, 124)))  # 48 images
    id_folder(tmp_path / "valid", (range(500, 503), range(600, 603)))
    c = _data_config(str(tmp_path / "train"), str(tmp_path / "valid"), service)
    train_ds, _, _ = data.build_datasets(c, progress=False)
    ids, _ = _epoch_ids(train_ds)
    assert sorted(ids) == sorted(train_ids)


def test_a_tiny_training_run_completes_through_the_service(service, tmp_path):
    train_dir = make_class_folder(tmp_path / "train", per_class=12, seed=1)
    val_dir = make_class_folder(tmp_path / "valid", per_class=4, seed=2)
    c = C.for_stage("baseline")
    c.data = _data_config(str(train_dir), str(val_dir), service)
    c.data.image_size = (32, 32)
    c.train.epochs = 2
    c.train.model_dir = str(tmp_path / "run")
    c.train.verbose = 0
    c.validate()
    train.run(c)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 2
    assert metrics["train_examples"] == 24 and metrics["val_examples"] == 8
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 3


@pytest.mark.parametrize("value", ["localhost:5000", "grpc://localhost", "grpc://:5000",
                                   "grpc://host:port", "http://host:5000"])
def test_a_malformed_address_names_the_flag(value):
    c = C.for_stage("baseline")
    c.data.train_dir, c.train.model_dir, c.data.data_service = "x", "m", value
    with pytest.raises(ValueError, match="data_service.*grpc://HOST:PORT"):
        c.validate()


@pytest.mark.parametrize("field,value,flag", [
    ("strategy", "multi_worker", "--strategy"),
    ("strategy", "tpu", "--strategy"),
    ("fast_features", True, "--fast_features"),
    ("deterministic", True, "--deterministic"),
])
def test_unsupported_combinations_name_both_flags(field, value, flag):
    c = C.for_stage("feature_extraction")
    c.data.train_dir, c.train.model_dir = "x", "m"
    c.data.data_service = "grpc://localhost:5000"
    setattr(c.data if field == "deterministic" else c.train, field, value)
    with pytest.raises(ValueError, match=f"--data_service.*{flag}|{flag}.*--data_service"):
        c.validate()


def test_only_a_folder_source_goes_through_the_service():
    c = C.for_stage("baseline")
    c.train.model_dir = "m"
    c.data.tfds_name, c.data.data_service = "cats_vs_dogs", "grpc://localhost:5000"
    with pytest.raises(ValueError, match="--data_service.*--tfds_name"):
        c.validate()


def test_an_unreachable_dispatcher_is_a_clear_error(tmp_path):
    (port,) = free_ports(1)
    make_class_folder(tmp_path / "train", per_class=8, seed=1)
    make_class_folder(tmp_path / "valid", per_class=2, seed=2)
    c = _data_config(str(tmp_path / "train"), str(tmp_path / "valid"),
                     f"grpc://127.0.0.1:{port}")
    with pytest.raises(ValueError, match=f"--data_service.*127.0.0.1:{port}"):
        data.build_datasets(c, progress=False)


def _start(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    return subprocess.Popen([sys.executable, os.path.join(REPO, "scripts", "data_service.py"),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)


def _wait_for(proc, text, timeout=60):
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    proc.kill()
    raise AssertionError(f"no {text!r} in: {''.join(lines)[-3000:]}")


@pytest.mark.slow
def test_the_script_serves_until_sigterm_or_ctrl_c(tmp_path):
    d_port, w_port = free_ports(2)
    dispatcher = _start("--dispatcher", f"--port={d_port}")
    _wait_for(dispatcher, f"dispatcher serving on port {d_port}")
    worker = _start("--worker", f"--dispatcher_address=127.0.0.1:{d_port}",
                    f"--port={w_port}", "--worker_host=127.0.0.1")
    _wait_for(worker, f"worker serving on 127.0.0.1:{w_port}")
    # The servers work: a dataset runs through them from this process.
    ds = tf.data.Dataset.range(10).apply(tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
        service=f"grpc://127.0.0.1:{d_port}"))
    assert sorted(int(x) for x in ds) == list(range(10))
    worker.send_signal(signal.SIGINT)
    dispatcher.send_signal(signal.SIGTERM)
    for proc, what in ((worker, "SIGINT"), (dispatcher, "SIGTERM")):
        out = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, out[-3000:]
        assert f"stopped on {what}" in out, out[-3000:]


@pytest.mark.parametrize("args,message", [
    ([], "exactly one of --dispatcher or --worker"),
    (["--dispatcher", "--worker", "--dispatcher_address=h:1"],
     "exactly one of --dispatcher or --worker"),
    (["--worker"], "--dispatcher_address"),
    (["--dispatcher", "--worker_host=h"], "--worker_host are for --worker"),
    (["--worker", "--dispatcher_address=grpc://h"], "--dispatcher_address"),
])
def test_the_script_refuses_bad_combinations_with_exit_2(args, message):
    proc = _start(*args)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2, out[-3000:]
    assert message in out, out[-3000:]


def test_server_addresses_and_ports_are_checked_with_the_flag_named():
    with pytest.raises(ValueError, match="--port.*70000"):
        data_service.check_port(70000)
    with pytest.raises(ValueError, match="--dispatcher_address.*grpc://h:1"):
        data_service.parse_host_port("grpc://h:1")
    assert data_service.parse_host_port("dispatcher-host:5050") == ("dispatcher-host", 5050)
    assert data_service.parse_address("grpc://[::1]:5050") == ("::1", 5050)


def test_workers_shuffle_anew_every_epoch():
    """A worker rebuilds its pipeline every epoch: a seeded shuffle there (an
    explicit seed, or one derived from the global seed a training run sets)
    would give the same order every epoch."""
    from tensorflow.python.eager import context  # pylint: disable=import-outside-toplevel
    previous = context.global_seed()
    tf.random.set_seed(1337)  # as train.run does
    dispatcher = data_service.start_dispatcher(0, job_gc_check_interval_ms=500,
                                               job_gc_timeout_ms=500)
    worker = data_service.start_worker(dispatcher.target.split("://")[1], 0,
                                       host="localhost")
    try:
        ds = tf.data.Dataset.range(64).map(lambda i: (i, i))
        ds = data_service.service_pipeline(ds, service=dispatcher.target, batch_size=64,
                                           num_examples=64, shuffle_buffer=0)
        orders = [next(iter(ds))[0].numpy().tolist() for _ in range(2)]
    finally:
        tf.random.set_seed(previous)
        worker.stop()
        dispatcher.stop()
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(64))
    assert orders[0] != orders[1]


@pytest.mark.slow
def test_a_mirrored_run_over_two_cpu_replicas_trains_through_the_service(service, tmp_path):
    train_dir = make_class_folder(tmp_path / "train", per_class=12, seed=1)
    val_dir = make_class_folder(tmp_path / "valid", per_class=4, seed=2)
    result = tmp_path / "result.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tests", "_stage_worker.py"), str(result),
         "--logical_cpus", "2", "--", f"--train_dir={train_dir}", f"--val_dir={val_dir}",
         "--image_size=32", "--batch_size=8", "--epochs=2", "--verbose=0",
         "--strategy=mirrored", f"--data_service={service}",
         f"--model_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(result.read_text())["metrics"]
    assert metrics["replicas"] == 2 and metrics["epochs_completed"] == 2, metrics


@pytest.mark.slow
def test_workers_lost_mid_run_stop_the_trainer_with_exit_75_and_a_rerun_resumes(tmp_path):
    """The service leaves a trainer whose workers died mid-epoch waiting for
    ever; the stall guard ends it (exit 75, the flag named) and a rerun
    resumes. (Both workers are killed: with one, whether the trainer stalls
    depends on whether that worker held part of the epoch when it died,
    which the test cannot time.)"""
    train_dir = make_class_folder(tmp_path / "train", per_class=80, seed=1)
    val_dir = make_class_folder(tmp_path / "valid", per_class=4, seed=2)
    d_port, *w_ports = free_ports(4)
    dispatcher = _start("--dispatcher", f"--port={d_port}")
    _wait_for(dispatcher, f"dispatcher serving on port {d_port}")

    def worker(port):
        proc = _start("--worker", f"--dispatcher_address=127.0.0.1:{d_port}",
                      f"--port={port}", "--worker_host=127.0.0.1")
        _wait_for(proc, f"worker serving on 127.0.0.1:{port}")
        return proc

    workers = [worker(w_ports[0]), worker(w_ports[1])]
    run = tmp_path / "run"
    command = [sys.executable, os.path.join(REPO, "scripts", "train_baseline.py"),
               f"--train_dir={train_dir}", f"--val_dir={val_dir}", f"--model_dir={run}",
               "--image_size=64", "--batch_size=4", "--epochs=3", "--verbose=0",
               "--shuffle_buffer=4",
               f"--data_service=grpc://127.0.0.1:{d_port}",
               "--data_service_timeout_seconds=15"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    try:
        trainer = subprocess.Popen(command, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env=env)
        history = run / "history.csv"
        deadline = time.time() + 240
        while time.time() < deadline and trainer.poll() is None and (
                not history.exists() or len(history.read_text().splitlines()) < 2):
            time.sleep(0.2)
        assert trainer.poll() is None, trainer.communicate()[0][-3000:]
        for proc in workers:  # SIGKILL in the second epoch
            proc.kill()
        out = trainer.communicate(timeout=120)[0]
        assert trainer.returncode == errors.EXIT_PREEMPTED, out[-3000:]
        assert "--data_service_timeout_seconds=15" in out and "rerun" in out, out[-3000:]
        assert len(history.read_text().splitlines()) == 2  # epoch 1 kept
        workers.append(worker(w_ports[2]))
        rerun = subprocess.run(command, capture_output=True, text=True, env=env,
                               timeout=240)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        epochs = [line.split(",")[0] for line in history.read_text().splitlines()[1:]]
        assert epochs == ["0", "1", "2"]
    finally:
        for proc in (*workers, dispatcher):
            proc.kill()
            proc.communicate()
