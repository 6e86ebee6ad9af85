"""Stages under strategies and restarts, as cluster batch jobs run them."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, free_ports, id_folder

WORKER = os.path.join(REPO, "tests", "_stage_worker.py")
INPUT_WORKER = os.path.join(REPO, "tests", "_input_worker.py")
SCRIPT = os.path.join(REPO, "scripts", "train_baseline.py")


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _flags(train_dir, val_dir, model_dir, epochs=2, batch=8):
    return [f"--train_dir={train_dir}", f"--val_dir={val_dir}", "--image_size=24",
            f"--batch_size={batch}", f"--epochs={epochs}", "--verbose=0",
            f"--model_dir={model_dir}"]


def _history(model_dir):
    path = os.path.join(model_dir, "history.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def test_mirrored_over_two_logical_cpus(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    result = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, WORKER, str(result), "--logical_cpus", "2", "--",
         *_flags(train_dir, val_dir, tmp_path / "m"), "--strategy=mirrored"],
        env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(result.read_text())["metrics"]
    assert metrics["replicas"] == 2 and metrics["strategy"] == "MirroredStrategy"
    assert metrics["epochs_completed"] == 2


def test_mirrored_uneven_batch_is_a_usage_error(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    proc = subprocess.run(
        [sys.executable, WORKER, str(tmp_path / "r.json"), "--logical_cpus", "2", "--",
         *_flags(train_dir, val_dir, tmp_path / "m", batch=7), "--strategy=mirrored"],
        env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "--batch_size=7" in proc.stderr and "2 replicas" in proc.stderr


def _train_two_workers(tmp_path, flags_, timeout):
    """Trains one job on two loopback workers; returns each worker's result JSON."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs.append(subprocess.Popen(
            [sys.executable, WORKER, str(tmp_path / f"r{i}.json"), "--", *flags_,
             "--strategy=multi_worker"],
            env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(2)]


def test_two_workers_on_loopback(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    model_dir = tmp_path / "m"
    r0, r1 = _train_two_workers(tmp_path, _flags(train_dir, val_dir, model_dir), timeout=400)
    assert r0["weights_sha256"] == r1["weights_sha256"]
    for name in ("config.json", "history.csv", "model.keras", "metrics.json",
                 "learning_curves.png"):
        assert (model_dir / name).exists(), name
    assert len(_history(model_dir)) == 2
    assert not [d for d in os.listdir(model_dir) if d.startswith(".worker-")]
    assert json.loads((model_dir / "metrics.json").read_text())["replicas"] == 2


@pytest.mark.slow
def test_workers_agree_to_refuse_a_resume_whose_settings_changed(tiny_folders, tmp_path):
    """Only worker 1 is given another learning rate: both workers stop with
    exit 2 before training (none waits for the other in fit)."""
    train_dir, val_dir = tiny_folders
    model_dir = tmp_path / "m"

    def job(epochs, extra):
        ports = free_ports(2)
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        procs = []
        for i in range(2):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            procs.append(subprocess.Popen(
                [sys.executable, WORKER, str(tmp_path / f"r{i}.json"), "--",
                 *_flags(train_dir, val_dir, model_dir, epochs=epochs),
                 "--strategy=multi_worker", *extra[i]],
                env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True))
        errs = [p.communicate(timeout=400)[1] for p in procs]
        return [(p.returncode, err) for p, err in zip(procs, errs)]

    for code, err in job(1, [[], []]):
        assert code == 0, err[-3000:]
    results = job(2, [[], ["--learning_rate=0.01"]])
    assert [code for code, _ in results] == [2, 2], [e[-2000:] for _, e in results]
    assert "learning_rate 0.001 -> 0.01" in results[1][1]
    assert "another worker" in results[0][1]
    assert len(_history(model_dir)) == 1


def _run_two_workers(worker, tmp_path, flags_, timeout=400):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs.append(subprocess.Popen(
            [sys.executable, worker, str(tmp_path / f"r{i}.json"), "--", *flags_,
             "--strategy=multi_worker"],
            env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(2)]


def _epochs_of(steps, mode):
    """Splits a worker's recorded steps into epochs of ``mode`` ids."""
    epochs, previous = [], None
    for step_mode, ids in steps:
        if step_mode == mode:
            if previous != mode:
                epochs.append([])
            epochs[-1].extend(ids)
        previous = step_mode
    return epochs


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["memory", "file"])
def test_two_workers_partition_every_epoch(tmp_path, cache):
    """Under MultiWorkerMirroredStrategy every training image is used exactly
    once per epoch across the workers, every validation image is evaluated
    exactly once, both workers run the same number of steps, and the order
    still changes between epochs."""
    train_labels = id_folder(tmp_path / "train", [range(0, 32), range(32, 64)])
    # 9 validation images, global batch 8: the last global batch holds one.
    val_labels = id_folder(tmp_path / "valid", [range(100, 105), range(105, 109)])
    cache_flag = str(tmp_path / "cache") if cache == "file" else "memory"
    flags_ = [f"--train_dir={tmp_path / 'train'}", f"--val_dir={tmp_path / 'valid'}",
              "--image_size=16", "--batch_size=8", "--epochs=2", "--verbose=0",
              "--jit_compile=false", f"--cache={cache_flag}",
              f"--model_dir={tmp_path / 'm'}"]
    results = _run_two_workers(INPUT_WORKER, tmp_path, flags_)
    train_epochs = [_epochs_of(r["steps"], "train") for r in results]
    val_epochs = [_epochs_of(r["steps"], "eval") for r in results]
    assert [len(e) for e in train_epochs] == [2, 2]
    assert [len(e) for e in val_epochs] == [2, 2]
    for epoch in range(2):
        a, b = train_epochs[0][epoch], train_epochs[1][epoch]
        assert len(a) == len(b) == 32, (len(a), len(b))  # same steps on both
        assert sorted(a + b) == sorted(train_labels), f"epoch {epoch}: {sorted(a + b)}"
        va, vb = val_epochs[0][epoch], val_epochs[1][epoch]
        assert sorted(va + vb) == sorted(val_labels), f"epoch {epoch}: {sorted(va + vb)}"
    for worker in train_epochs:
        assert worker[0] != worker[1]  # reshuffled every epoch
    eval_steps = [[ids for mode, ids in r["steps"] if mode == "eval"] for r in results]
    assert len(eval_steps[0]) == len(eval_steps[1])
    assert all(ids for steps in eval_steps for ids in steps)  # no empty batch
    metrics = results[0]["metrics"]
    assert metrics["train_examples"] == 64 and metrics["val_examples"] == 9


def _start(flags_):
    return subprocess.Popen([sys.executable, SCRIPT, *flags_], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_epochs(proc, model_dir, n, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(_history(model_dir)) >= n:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _assert_complete(model_dir, epochs):
    rows = _history(model_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["epochs_completed"] == epochs
    accs = [float(r["val_accuracy"]) for r in rows]
    assert metrics["best_val_accuracy"] == pytest.approx(max(accs))
    best = json.loads((model_dir / "model.best.json").read_text())
    assert best["best"] == pytest.approx(max(accs))
    assert (model_dir / "model.keras").exists()


@pytest.mark.parametrize("sig,code", [(signal.SIGKILL, -signal.SIGKILL),
                                      (signal.SIGTERM, 75)])
def test_killed_run_resumes_with_each_epoch_once(tiny_folders, tmp_path, sig, code):
    train_dir, val_dir = tiny_folders
    model_dir = tmp_path / "m"
    flags_ = _flags(train_dir, val_dir, model_dir, epochs=40, batch=4)
    proc = _start(flags_)
    assert _wait_for_epochs(proc, model_dir, 2), proc.communicate()[1][-3000:]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    done = len(_history(model_dir))
    assert 2 <= done < 40
    # Resume: same command, fewer total epochs to keep the test short.
    flags_ = _flags(train_dir, val_dir, model_dir, epochs=done + 2, batch=4)
    again = subprocess.run([sys.executable, SCRIPT, *flags_], env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    _assert_complete(model_dir, done + 2)


@pytest.mark.slow  # a killed script run and its rerun (~40 s)
def test_killed_cosine_run_resumes_the_schedule_at_the_same_step(tiny_folders, tmp_path):
    """SIGKILL mid-run, same command again: the learning_rate column is the
    one an uninterrupted run has (the schedule follows the restored step)."""
    import math  # pylint: disable=import-outside-toplevel
    train_dir, val_dir = tiny_folders
    model_dir = tmp_path / "m"
    epochs, steps = 12, 8  # 32 training images in batches of 4
    flags_ = _flags(train_dir, val_dir, model_dir, epochs=epochs, batch=4) + [
        "--lr_schedule=cosine", "--warmup_epochs=1"]
    proc = _start(flags_)
    assert _wait_for_epochs(proc, model_dir, 2), proc.communicate()[1][-3000:]
    proc.kill()
    proc.communicate(timeout=120)
    assert 2 <= len(_history(model_dir)) < epochs
    again = subprocess.run([sys.executable, SCRIPT, *flags_], env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    _assert_complete(model_dir, epochs)
    total, warmup = epochs * steps, steps

    def rate(step):
        if step < warmup:
            return 1e-3 * step / warmup
        return 1e-3 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    rates = [float(r["learning_rate"]) for r in _history(model_dir)]
    assert rates == pytest.approx([rate((e + 1) * steps - 1) for e in range(epochs)],
                                  rel=1e-5)


def test_second_live_run_is_refused(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    model_dir = tmp_path / "m"
    first = _start(_flags(train_dir, val_dir, model_dir, epochs=40, batch=4))
    try:
        assert _wait_for_epochs(first, model_dir, 1), first.communicate()[1][-3000:]
        second = subprocess.run([sys.executable, SCRIPT,
                                 *_flags(train_dir, val_dir, model_dir, epochs=2)],
                                env=_env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 73, second.stderr[-3000:]
        assert str(first.pid) in second.stderr
    finally:
        first.kill()
        first.communicate()


def _start_workers(tmp_path, flags_, tag):
    """Both workers of a 2-worker job on loopback, each logging to a file."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        with open(tmp_path / f"{tag}-{i}.log", "w") as log:
            procs.append(subprocess.Popen(
                [sys.executable, WORKER, str(tmp_path / f"{tag}-{i}.json"), "--",
                 *flags_, "--strategy=multi_worker"],
                env=_env(TF_CONFIG=tf_config), stdout=log, stderr=subprocess.STDOUT))
    return procs


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])  # 0: the chief, which also hosts
def test_sigkilled_worker_ends_the_other_with_75_and_the_job_resumes(  # TF's
        tiny_folders, tmp_path, victim):                               # coordination
    train_dir, val_dir = tiny_folders
    model_dir = tmp_path / "m"
    survivor = 1 - victim
    timeout = 10
    flags_ = [*_flags(train_dir, val_dir, model_dir, epochs=40, batch=4),
              f"--worker_timeout_seconds={timeout}"]
    procs = _start_workers(tmp_path, flags_, "run")
    try:
        deadline = time.time() + 300
        while len(_history(model_dir)) < 2:
            assert time.time() < deadline, "no epoch finished"
            assert all(p.poll() is None for p in procs), (
                tmp_path / f"run-{survivor}.log").read_text()[-3000:]
            time.sleep(0.1)
        procs[victim].kill()  # SIGKILL: no handler runs, nothing is said
        killed = time.monotonic()
        # The bound: the timeout, one check interval and the grace period.
        code = procs[survivor].wait(timeout=timeout + 5 + 30 + 15)
        waited = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    log = (tmp_path / f"run-{survivor}.log").read_text()
    assert code == 75, log[-3000:]
    assert f"worker-{victim} (127.0.0.1:" in log and "is gone" in log, log[-3000:]
    assert "rerun every worker" in log
    assert "Traceback" not in log
    done = len(_history(model_dir))
    assert 2 <= done < 40
    print(f"worker-{survivor} exited {waited:.1f} s after worker-{victim}'s SIGKILL")

    # Rerunning both workers resumes from the last completed epoch.
    flags_ = [*_flags(train_dir, val_dir, model_dir, epochs=done + 2, batch=4),
              f"--worker_timeout_seconds={timeout}"]
    procs = _start_workers(tmp_path, flags_, "again")
    codes = [p.wait(timeout=400) for p in procs]
    assert codes == [0, 0], (tmp_path / "again-0.log").read_text()[-3000:]
    assert [int(r["epoch"]) for r in _history(model_dir)] == list(range(done + 2))
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["epochs_completed"] == done + 2
    assert "Resuming from backup" in (tmp_path / "again-1.log").read_text()
    assert not [d for d in os.listdir(model_dir) if d.startswith(".worker-")]


@pytest.mark.slow  # two worker processes (~1-2 min under load)
def test_two_workers_train_with_mixing_rand_augment_and_smoothing(tmp_path):
    # Each worker builds its own mixing (its own seed) inside
    # distribute_datasets_from_function; the workers stay in step.
    from helpers import make_class_folder
    classes = ("bird", "cat", "dog")
    train_dir = make_class_folder(tmp_path / "tr", classes=classes, per_class=8, seed=1)
    val_dir = make_class_folder(tmp_path / "va", classes=classes, per_class=3, seed=2)
    model_dir = tmp_path / "m"
    r0, r1 = _train_two_workers(
        tmp_path, [*_flags(train_dir, val_dir, model_dir), "--augment", "--rand_augment",
                   "--mixup=0.4", "--cutmix=1.0", "--label_smoothing=0.1"], timeout=600)
    assert r0["weights_sha256"] == r1["weights_sha256"]
    assert len(_history(model_dir)) == 2
    assert json.loads((model_dir / "config.json").read_text())["train"]["cutmix"] == 1.0


def _evaluate_saved_model(model_dir, train_dir, val_dir, image_size=24, batch=8):
    """Loss and accuracy of ``model_dir``'s model.keras over the whole
    validation folder, on one device."""
    from catdog import config as C  # pylint: disable=import-outside-toplevel
    from catdog import data, models  # pylint: disable=import-outside-toplevel
    c = C.for_stage("baseline")
    c.data.train_dir, c.data.val_dir = str(train_dir), str(val_dir)
    c.data.image_size, c.data.batch_size = (image_size, image_size), batch
    index = data.index_source(c.data, progress=False)
    _, val_ds, _ = data.build_datasets(c.data, index)
    model = models.load_model(str(model_dir))
    models.compile_model(model, index.num_classes, 1e-3)
    return model.evaluate(val_ds, verbose=0, return_dict=True)


@pytest.mark.slow  # two workers for up to 13 epochs (~1 min)
def test_two_workers_stop_early_at_the_same_epoch_on_the_metric_of_all_workers(
        tiny_folders, tmp_path):
    """Cosine with warm-up and early stopping across two workers: each worker
    validates half of the images, yet both decide on the metric over all of
    them (the number a single device computes), so both stop after the same
    epoch (a worker stopping alone would leave the other waiting in a
    collective) and the chief writes why."""
    train_dir, val_dir = tiny_folders
    model_dir = tmp_path / "m"
    # 12 validation images: val_accuracy cannot rise strictly for 13 epochs.
    r0, r1 = _train_two_workers(
        tmp_path, [*_flags(train_dir, val_dir, model_dir, epochs=30), "--lr_schedule=cosine",
                   "--warmup_epochs=1", "--early_stopping_patience=1",
                   "--learning_rate=0.01"], timeout=600)
    m0, m1 = r0["metrics"], r1["metrics"]
    assert r0["weights_sha256"] == r1["weights_sha256"]
    assert m0["epochs_completed"] == m1["epochs_completed"] < 30
    assert m0["final"] == m1["final"]  # every logged number, on both workers
    assert m0["best_epoch"] == m1["best_epoch"]
    rows = _history(model_dir)
    assert len(rows) == m0["epochs_completed"]
    accs = [float(r["val_accuracy"]) for r in rows]
    best = accs.index(max(accs))
    assert len(rows) == best + 2  # stopped one epoch after the best
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["stopped"] == (f"early stopping: val_accuracy did not improve for "
                                  f"1 epoch after epoch {best + 1}")
    assert metrics["best_epoch"] == best + 1
    # The logged validation numbers are those of all 12 images.
    full = _evaluate_saved_model(model_dir, train_dir, val_dir)
    assert full["accuracy"] == pytest.approx(accs[best])
    assert full["loss"] == pytest.approx(float(rows[best]["val_loss"]), rel=1e-4)
