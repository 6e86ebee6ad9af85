"""Tests for catdog.distribute: strategies, chief logic, batches, sharding
and the Keras multi-worker compatibility layer.

Multi-worker and multi-replica runs happen in subprocesses: a
MultiWorkerMirroredStrategy or a logical-device split must be set up before
TensorFlow initializes, and would leak into the rest of the test session.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from catdog import distribute
from catdog import keras_patches
from helpers import REPO, FakeMultiWorker, free_ports

MW_WORKER = os.path.join(REPO, "tests", "_mw_worker.py")


WORKERS = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
WITH_CHIEF = {"chief": ["127.0.0.1:3"], **WORKERS}


@pytest.fixture(autouse=True)
def _unpatched_keras():
    yield
    keras_patches.remove_keras_multiworker_fix()


# --------------------------------------------------------------------------
# build_strategy


def test_default_and_auto_on_cpu_are_the_default_strategy(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.build_strategy("default") is tf.distribute.get_strategy()
    assert distribute.build_strategy("auto") is tf.distribute.get_strategy()
    assert distribute.build_strategy().num_replicas_in_sync == 1


def test_auto_warns_when_tf_config_describes_a_cluster(monkeypatch, caplog):
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": WORKERS, "task": {"type": "worker", "index": 0}}))
    with caplog.at_level(logging.WARNING, logger="catdog.distribute"):
        strategy = distribute.build_strategy("auto")
    assert strategy is tf.distribute.get_strategy()
    assert "--strategy=multi_worker" in caplog.text


def test_one_device_and_mirrored_on_cpu():
    one = distribute.build_strategy("one_device")
    assert isinstance(one, tf.distribute.OneDeviceStrategy)
    mirrored = distribute.build_strategy("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync == 1


def test_a_strategy_is_built_once_per_process():
    """The stages of one job (run_pipeline.py) share one strategy: a second
    MirroredStrategy in the process restarts TensorFlow's collective keys, so
    its all-reduces clash with the first one's (a shape mismatch as soon as
    the model differs)."""
    for name in ("mirrored", "one_device"):
        assert distribute.build_strategy(name) is distribute.build_strategy(name)


def test_unknown_strategy_lists_the_choices():
    with pytest.raises(ValueError) as e:
        distribute.build_strategy("horovod")
    assert "'horovod'" in str(e.value) and "--strategy" in str(e.value)
    for name in distribute.STRATEGY_NAMES:
        assert name in str(e.value)


@pytest.mark.parametrize("tf_config, problem", [
    (None, "TF_CONFIG is not set"),
    ("{cluster: 1", "not valid JSON"),
    ('["worker"]', "must be a JSON object"),
    ('{"task": {"type": "worker", "index": 0}}', 'no "cluster"'),
    ('{"cluster": {"worker": "h:1"}, "task": {"type": "worker", "index": 0}}',
     "non-empty list"),
    ('{"cluster": {"worker": ["h:1"]}}', 'no "task"'),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "ps", "index": 0}}',
     "'ps' is not in the cluster"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 1}}',
     "index 1 is out of range"),
])
def test_multi_worker_rejects_bad_tf_config(monkeypatch, tf_config, problem):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError) as e:
        distribute.build_strategy("multi_worker")
    msg = str(e.value)
    assert problem in msg
    assert "TF_CONFIG" in msg and "--strategy=multi_worker" in msg
    assert '"cluster": {"worker": ["host0:12345"' in msg  # the example


def test_parse_tf_config_accepts_a_chief_cluster():
    config = distribute.parse_tf_config(json.dumps(
        {"cluster": WITH_CHIEF, "task": {"type": "chief", "index": 0}}))
    assert config["task"]["type"] == "chief"


def test_tpu_without_a_tpu_is_a_clear_error(monkeypatch):
    for var in ("TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError) as e:
        distribute.build_strategy("tpu")
    assert "--strategy=tpu" in str(e.value) and "--tpu=" in str(e.value)


# --------------------------------------------------------------------------
# chief, task names, artifact directories


def test_single_process_is_chief_and_writes_into_model_dir(tmp_path):
    strategy = tf.distribute.get_strategy()
    assert distribute.is_chief(strategy)
    assert not distribute.is_multi_worker(strategy)
    assert distribute.task_name(strategy) is None
    assert distribute.artifact_dir(str(tmp_path), strategy) == str(tmp_path)
    distribute.cleanup_artifact_dir(str(tmp_path), str(tmp_path))
    assert tmp_path.exists()


@pytest.mark.parametrize("cluster, task_type, task_id, chief", [
    (WORKERS, "worker", 0, True),
    (WORKERS, "worker", 1, False),
    (WITH_CHIEF, "chief", 0, True),
    (WITH_CHIEF, "worker", 0, False),
    (WITH_CHIEF, "worker", 1, False),
])
def test_is_chief_in_a_cluster(cluster, task_type, task_id, chief):
    strategy = FakeMultiWorker(cluster, task_type, task_id)
    assert distribute.is_multi_worker(strategy)
    assert distribute.is_chief(strategy) is chief
    assert distribute.task_name(strategy) == f"{task_type}-{task_id}"


def test_non_chief_writes_into_a_private_dir_that_cleanup_removes(tmp_path):
    model_dir = str(tmp_path / "run")
    chief = FakeMultiWorker(WORKERS, "worker", 0)
    worker = FakeMultiWorker(WORKERS, "worker", 1)
    assert distribute.artifact_dir(model_dir, chief) == model_dir
    private = distribute.artifact_dir(model_dir, worker)
    assert private == os.path.join(model_dir, ".worker-worker-1")
    assert os.path.isdir(private)
    with open(os.path.join(private, "model.keras"), "w") as f:
        f.write("x")
    distribute.cleanup_artifact_dir(private, model_dir)
    assert not os.path.exists(private)
    assert os.path.isdir(model_dir)


def test_cleanup_refuses_anything_but_a_worker_dir(tmp_path):
    model_dir = tmp_path / "run"
    data = tmp_path / "data"
    data.mkdir()
    for path in (data, model_dir / "backup", tmp_path / ".worker-worker-1"):
        with pytest.raises(ValueError, match="Refusing to delete"):
            distribute.cleanup_artifact_dir(str(path), str(model_dir))
    assert data.exists()


def test_any_worker_is_the_flag_itself_without_multi_worker():
    assert distribute.any_worker(None, True) is True
    assert distribute.any_worker(tf.distribute.get_strategy(), False) is False


# --------------------------------------------------------------------------
# global batch size


def test_several_steps_per_execution_need_one_replica():
    from helpers import FakeMultiWorker  # pylint: disable=import-outside-toplevel
    one = tf.distribute.get_strategy()
    distribute.steps_per_execution_check(4, one)
    distribute.steps_per_execution_check(1, FakeMultiWorker(replicas=2))
    with pytest.raises(ValueError, match=r"--steps_per_execution=4 .*2 replicas") as e:
        distribute.steps_per_execution_check(4, FakeMultiWorker(replicas=2))
    assert "--steps_per_execution=1" in str(e.value)


def test_global_batch_check_returns_the_per_replica_batch():
    assert distribute.global_batch_check(32, tf.distribute.get_strategy()) == 32
    assert distribute.global_batch_check(
        32, FakeMultiWorker(WORKERS, "worker", 0, replicas=4)) == 8


def test_uneven_global_batch_names_flag_and_replicas():
    strategy = FakeMultiWorker(WORKERS, "worker", 0, replicas=4)
    with pytest.raises(ValueError) as e:
        distribute.global_batch_check(30, strategy)
    assert str(e.value).startswith(
        "--batch_size=30 does not divide evenly across 4 replicas; use a "
        "multiple of 4")
    assert "28" in str(e.value) and "32" in str(e.value)


@pytest.mark.parametrize("bad", [0, -8, 8.0, "8", True])
def test_global_batch_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="--batch_size=.*positive integer"):
        distribute.global_batch_check(bad, tf.distribute.get_strategy())


# --------------------------------------------------------------------------
# input sharding


def test_shard_policy_by_source():
    policy = tf.data.experimental.AutoShardPolicy
    assert distribute.shard_policy("folder") == policy.DATA
    assert distribute.shard_policy("tfds") == policy.DATA
    assert distribute.shard_policy("tfrecord") == policy.FILE
    assert distribute.shard_policy("tfrecord", num_files=8,
                                   num_workers=4) == policy.FILE
    # Fewer files than workers: FILE sharding would fail at run time.
    assert distribute.shard_policy("tfrecord", num_files=1,
                                   num_workers=2) == policy.DATA
    with pytest.raises(ValueError, match="'csv'.*folder, tfds, tfrecord"):
        distribute.shard_policy("csv")


@pytest.mark.parametrize("policy", [
    tf.data.experimental.AutoShardPolicy.DATA,
    tf.data.experimental.AutoShardPolicy.FILE, "data", "OFF"])
def test_with_shard_policy_sets_the_option_and_keeps_the_data(policy):
    ds = tf.data.Dataset.range(6).map(lambda x: x * 2).batch(
        3, drop_remainder=True)
    sharded = distribute.with_shard_policy(ds, policy)
    expected = (tf.data.experimental.AutoShardPolicy[policy.upper()]
                if isinstance(policy, str) else policy)
    assert (sharded.options().experimental_distribute.auto_shard_policy ==
            expected)
    assert [b.tolist() for b in sharded.as_numpy_iterator()] == [[0, 2, 4],
                                                                 [6, 8, 10]]
    assert sharded.element_spec == ds.element_spec


def test_with_shard_policy_rejects_unknown_names():
    with pytest.raises(ValueError, match="'rows'.*DATA"):
        distribute.with_shard_policy(tf.data.Dataset.range(2), "rows")


# --------------------------------------------------------------------------
# Subprocess runs


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    env.update(extra)
    return env


def _start_two_workers(tmp_path, *args):
    """Starts both tasks of a 2-worker job on loopback; returns Popens."""
    model_dir, result_dir = tmp_path / "model", tmp_path / "results"
    model_dir.mkdir(exist_ok=True)
    result_dir.mkdir(exist_ok=True)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster,
                                "task": {"type": "worker", "index": index}})
        log = open(tmp_path / f"worker-{index}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, MW_WORKER, str(model_dir), str(result_dir),
             *args], env=_env(TF_CONFIG=tf_config), stdout=log,
            stderr=subprocess.STDOUT))
        log.close()
    return procs


def _wait(procs, tmp_path, timeout=240):
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1, deadline - time.monotonic()))
                for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        logs = [(tmp_path / f"worker-{i}.log").read_text() for i in range(2)]
        pytest.fail("multi-worker job timed out:\n" + "\n".join(
            l[-3000:] for l in logs))


def _results(tmp_path):
    return [json.loads((tmp_path / "results" / f"result-worker-{i}.json")
                       .read_text()) for i in range(2)]


def _logs(tmp_path):
    return [(tmp_path / f"worker-{i}.log").read_text() for i in range(2)]


def test_two_worker_fit_with_the_fix(tmp_path):
    codes = _wait(_start_two_workers(tmp_path, "--epochs", "2"), tmp_path)
    assert codes == [0, 0], "\n".join(l[-3000:] for l in _logs(tmp_path))
    chief, worker = _results(tmp_path)
    assert chief["is_chief"] and not worker["is_chief"]
    assert chief["history"] == worker["history"]
    assert len(chief["history"]["loss"]) == 2
    assert set(chief["history"]) == {"loss", "accuracy", "val_loss",
                                     "val_accuracy"}
    assert chief["weights_sha256"] == worker["weights_sha256"]

    model_dir = tmp_path / "model"
    # Only the chief's files are left; the worker's scratch dir is gone.
    assert (model_dir / "artifact.txt").read_text() == "worker-0"
    assert not list(model_dir.glob(".worker-*"))
    rows = (model_dir / "history.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["epoch", "0", "1"]
    assert (model_dir / "model.keras").exists()
    metadata = json.loads(
        (model_dir / "backup" / "training_metadata.json").read_text())
    assert metadata["epoch"] == 2


@pytest.mark.slow
def test_two_worker_fit_without_the_fix_fails_as_known(tmp_path):
    # When this starts passing fit() without the fix, Keras fixed the bug.
    codes = _wait(_start_two_workers(tmp_path, "--fix", "none"), tmp_path)
    assert codes != [0, 0]
    log = "\n".join(_logs(tmp_path))
    assert "PerReplica" in log and "to a Tensor" in log


@pytest.mark.slow
def test_two_worker_fit_needs_the_log_reduction_fix_too(tmp_path):
    codes = _wait(_start_two_workers(tmp_path, "--fix", "build"), tmp_path)
    assert codes != [0, 0]
    assert "Invalid reduction dimension 0" in "\n".join(_logs(tmp_path))


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_and_the_job_resumes(tmp_path):
    args = ("--epochs", "4", "--step_sleep", "0.3")
    procs = _start_two_workers(tmp_path, *args)
    history = tmp_path / "model" / "history.csv"
    deadline = time.monotonic() + 180
    while not (history.exists() and history.read_text().count("\n") >= 2):
        assert time.monotonic() < deadline, "no epoch finished"
        assert all(p.poll() is None for p in procs), _logs(tmp_path)
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)  # only the non-chief is preempted
    codes = _wait(procs, tmp_path)
    assert codes == [75, 75], "\n".join(l[-3000:] for l in _logs(tmp_path))
    chief, worker = _results(tmp_path)
    assert chief["stopped"] == worker["stopped"]
    assert chief["requested"] and worker["requested"]
    assert chief["weights_sha256"] == worker["weights_sha256"]
    stopped_epoch = chief["stopped"][0]
    assert 1 <= stopped_epoch < 4

    # The same command again resumes both workers from the chief's backup.
    codes = _wait(_start_two_workers(tmp_path, *args), tmp_path)
    assert codes == [0, 0], "\n".join(l[-3000:] for l in _logs(tmp_path))
    chief, worker = _results(tmp_path)
    assert chief["history"] == worker["history"]
    assert chief["weights_sha256"] == worker["weights_sha256"]
    assert len(chief["history"]["loss"]) == 4 - stopped_epoch
    epochs = [r.split(",")[0] for r in history.read_text().splitlines()[1:]]
    assert epochs == ["0", "1", "2", "3"]


_MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    from catdog import distribute
    strategy = distribute.build_strategy("mirrored")
    out = {"replicas": strategy.num_replicas_in_sync}
    try:
        distribute.global_batch_check(7, strategy)
    except ValueError as e:
        out["uneven"] = str(e)
    per_replica = distribute.global_batch_check(8, strategy)
    x = np.random.default_rng(0).normal(size=(40, 5)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(
        8, drop_remainder=True)
    with strategy.scope():
        model = keras.Sequential([keras.Input((5,)),
                                  keras.layers.Dense(4, activation="relu"),
                                  keras.layers.Dense(1, activation="sigmoid")])
        model.compile(optimizer="adam", loss="binary_crossentropy",
                      metrics=["accuracy"])
    history = model.fit(ds, epochs=2, verbose=0)
    out.update(per_replica=per_replica, loss=history.history["loss"],
               variable=type(model.layers[0].kernel.value).__name__)
    print("RESULT " + json.dumps(out))
""")


def test_mirrored_over_two_cpu_replicas(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT], env=_env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    assert out["replicas"] == 2
    assert out["per_replica"] == 4
    assert out["uneven"].startswith(
        "--batch_size=7 does not divide evenly across 2 replicas; use a "
        "multiple of 2")
    assert len(out["loss"]) == 2 and all(np.isfinite(out["loss"]))
    assert out["variable"] == "MirroredVariable"


_MW_AUGMENT_SCRIPT = textwrap.dedent("""
    import json, sys
    from catdog import distribute
    strategy = distribute.build_strategy("multi_worker")
    import numpy as np, tensorflow as tf
    from catdog import augment
    with strategy.scope():
        block = augment.build_augmentation(seed=7)
    x = np.random.RandomState(0).uniform(0, 255, (4, 24, 24, 3)).astype("float32")

    @tf.function
    def step(batch):
        return strategy.run(lambda t: block(t, training=True), args=(batch,))

    context = tf.distribute.get_replica_context
    ids = strategy.run(lambda: context().replica_id_in_sync_group)
    out = strategy.experimental_local_results(step(tf.constant(x)))[0].numpy()
    np.save(sys.argv[1], out)
    print("REPLICA", int(strategy.experimental_local_results(ids)[0]))
""")


@pytest.mark.slow
def test_workers_draw_different_transforms(tmp_path):
    """Each worker's replica folds its GLOBAL replica id into the augmentation
    seeds: the same batch on two workers is augmented differently."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster,
                                "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, "-c", _MW_AUGMENT_SCRIPT, str(tmp_path / f"w{index}.npy")],
            env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert [o.split("REPLICA ")[-1].strip() for o, _ in outs] == ["0", "1"]
    w0, w1 = (np.load(tmp_path / f"w{i}.npy") for i in range(2))
    assert w0.shape == w1.shape == (4, 24, 24, 3)
    assert not np.allclose(w0, w1)


def _wait_for_file(path, procs, tmp_path, timeout=180):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, "\n".join(_logs(tmp_path))
        assert all(p.poll() is None for p in procs), "\n".join(
            l[-3000:] for l in _logs(tmp_path))
        time.sleep(0.05)


@pytest.mark.slow
def test_worker_outside_any_collective_exits_when_its_peer_is_gone(tmp_path):
    # Worker 0 is in a long phase of its own (no collective to fail) when
    # worker 1 is SIGKILLed: only the watchdog can end it within the bound.
    procs = _start_two_workers(
        tmp_path, "--epochs", "3", "--worker_timeout", "4", "--grace", "3",
        "--stall_task", "0", "--stall_epoch", "0", "--stall_seconds", "300")
    _wait_for_file(tmp_path / "results" / "stalling-0", procs, tmp_path)
    procs[1].kill()
    killed = time.monotonic()
    try:
        code = procs[0].wait(timeout=60)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        pytest.fail("the survivor stayed in its 300 s phase:\n" + _logs(tmp_path)[0][-3000:])
    waited = time.monotonic() - killed
    print(f"worker-0 exited {waited:.1f} s after worker-1's SIGKILL")
    log = _logs(tmp_path)[0]
    assert code == 75, log[-3000:]
    assert "worker-1 (127.0.0.1:" in log and "is gone" in log, log[-3000:]
    assert waited < 4 + 5 + 3 + 10, waited


@pytest.mark.slow
def test_slow_phase_longer_than_the_timeout_is_not_a_lost_worker(tmp_path):
    # Worker 1 spends 3x the timeout at an epoch end (as saving a large model
    # or a long validation would) while worker 0 waits for it in a collective.
    procs = _start_two_workers(
        tmp_path, "--epochs", "2", "--worker_timeout", "4",
        "--stall_task", "1", "--stall_epoch", "0", "--stall_seconds", "12")
    codes = _wait(procs, tmp_path)
    assert codes == [0, 0], "\n".join(l[-3000:] for l in _logs(tmp_path))
    assert (tmp_path / "results" / "stalling-1").exists()
    chief, worker = _results(tmp_path)
    assert len(chief["history"]["loss"]) == 2
    assert chief["weights_sha256"] == worker["weights_sha256"]
    assert "is gone" not in "\n".join(_logs(tmp_path))
