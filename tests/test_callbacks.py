"""Tests for catdog.callbacks: resumable callbacks, preemption, and
kill-and-restart of a real training subprocess."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from catdog import callbacks
from catdog import errors
from helpers import REPO, FakeMultiWorker

RESUME_WORKER = os.path.join(REPO, "tests", "_resume_worker.py")


# --------------------------------------------------------------------------
# ResumableCSVLogger


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _run_epochs(callback, epochs, logs_fn):
    for epoch in epochs:
        callback.on_epoch_begin(epoch)
        callback.on_epoch_end(epoch, logs_fn(epoch))


def test_csv_logger_writes_one_row_per_epoch(tmp_path):
    path = tmp_path / "history.csv"
    logger = callbacks.ResumableCSVLogger(str(path))
    _run_epochs(logger, range(3), lambda e: {"loss": 1.0 / (e + 1),
                                             "accuracy": 0.5 + e / 10})
    rows = _rows(path)
    assert path.read_text().splitlines()[0] == "epoch,accuracy,loss"
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert float(rows[2]["loss"]) == 1.0 / 3
    assert float(rows[1]["accuracy"]) == 0.6


def test_csv_logger_drops_rows_of_epochs_that_run_again(tmp_path):
    path = tmp_path / "history.csv"
    _run_epochs(callbacks.ResumableCSVLogger(str(path)), range(4),
                lambda e: {"loss": float(e)})
    # A restart whose backup says 2 epochs were completed redoes epochs 2, 3.
    _run_epochs(callbacks.ResumableCSVLogger(str(path)), range(2, 5),
                lambda e: {"loss": e + 0.5})
    rows = _rows(path)
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert [float(r["loss"]) for r in rows] == [0.0, 1.0, 2.5, 3.5, 4.5]
    assert path.read_text().count("epoch,loss") == 1


def test_csv_logger_union_header_when_new_keys_appear(tmp_path):
    path = tmp_path / "history.csv"
    logger = callbacks.ResumableCSVLogger(str(path))
    _run_epochs(logger, [0], lambda e: {"loss": 1.0})
    _run_epochs(logger, [1], lambda e: {"loss": 0.5, "val_loss": 0.7})
    assert path.read_text().splitlines() == [
        "epoch,loss,val_loss", "0,1.0,", "1,0.5,0.7"]


def test_csv_logger_rejects_a_foreign_csv(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("name,value\na,1\n")
    with pytest.raises(ValueError, match="history.csv is not a history.csv"):
        callbacks.ResumableCSVLogger(str(path)).on_epoch_begin(0)
    assert path.read_text() == "name,value\na,1\n"


# --------------------------------------------------------------------------
# BestModelCheckpoint


def _tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def _checkpoint(tmp_path, **kwargs):
    callback = callbacks.BestModelCheckpoint(str(tmp_path / "model.keras"),
                                              **kwargs)
    callback.set_model(_tiny_model())
    return callback


def _state(tmp_path):
    return json.loads((tmp_path / "model.best.json").read_text())


def test_best_checkpoint_saves_on_improvement_after_commit(tmp_path):
    best = _checkpoint(tmp_path)
    best.on_epoch_begin(0)
    best.on_epoch_end(0, {"val_accuracy": 0.6})
    # Not committed yet: the epoch's backup comes after this callback.
    assert (tmp_path / "model.pending.keras").exists()
    assert not (tmp_path / "model.keras").exists()
    assert (best.best, best.best_epoch) == (0.6, 0)
    best.on_epoch_begin(1)
    assert (tmp_path / "model.keras").exists()
    assert not (tmp_path / "model.pending.keras").exists()
    best.on_epoch_end(1, {"val_accuracy": 0.5})  # worse: nothing saved
    best.on_epoch_begin(2)
    best.on_epoch_end(2, {"val_accuracy": 0.6})  # equal: not an improvement
    assert not (tmp_path / "model.pending.keras").exists()
    best.on_train_end()
    state = _state(tmp_path)
    assert (state["best"], state["best_epoch"], state["pending"]) == (0.6, 0,
                                                                      None)
    assert isinstance(keras.saving.load_model(tmp_path / "model.keras"),
                      keras.Model)


def test_best_checkpoint_remembers_the_best_across_restarts(tmp_path):
    first = _checkpoint(tmp_path)
    _run_epochs(first, range(2), lambda e: {"val_accuracy": [0.5, 0.8][e]})
    first.on_train_end()
    stamp = os.stat(tmp_path / "model.keras").st_mtime_ns

    restarted = _checkpoint(tmp_path)
    assert (restarted.best, restarted.best_epoch) == (0.8, 1)
    _run_epochs(restarted, range(2, 4), lambda e: {"val_accuracy": 0.7})
    restarted.on_train_end()
    assert os.stat(tmp_path / "model.keras").st_mtime_ns == stamp
    assert _state(tmp_path)["best"] == 0.8

    again = _checkpoint(tmp_path)
    _run_epochs(again, [4], lambda e: {"val_accuracy": 0.9})
    again.on_train_end()
    assert (_state(tmp_path)["best"], _state(tmp_path)["best_epoch"]) == (0.9,
                                                                          4)


def test_uncommitted_best_is_discarded_when_its_epoch_runs_again(tmp_path):
    first = _checkpoint(tmp_path)
    _run_epochs(first, range(2), lambda e: {"val_accuracy": [0.5, 0.8][e]})
    # Killed before epoch 1 was committed: the restart redoes epoch 1.
    restarted = _checkpoint(tmp_path)
    restarted.on_epoch_begin(1)
    assert not (tmp_path / "model.pending.keras").exists()
    assert (restarted.best, restarted.best_epoch) == (0.5, 0)
    restarted.on_epoch_end(1, {"val_accuracy": 0.6})
    restarted.on_train_end()
    assert (_state(tmp_path)["best"], _state(tmp_path)["best_epoch"]) == (0.6,
                                                                          1)


def test_committed_pending_best_is_promoted_on_restart(tmp_path):
    first = _checkpoint(tmp_path)
    _run_epochs(first, range(2), lambda e: {"val_accuracy": [0.5, 0.8][e]})
    # Killed after epoch 1 was committed, before the promotion.
    restarted = _checkpoint(tmp_path)
    restarted.on_epoch_begin(2)
    assert (_state(tmp_path)["best"], _state(tmp_path)["best_epoch"]) == (0.8,
                                                                          1)
    assert not (tmp_path / "model.pending.keras").exists()


def test_best_checkpoint_min_mode_and_nan(tmp_path):
    best = _checkpoint(tmp_path, monitor="val_loss", mode="min")
    _run_epochs(best, range(3),
                lambda e: {"val_loss": [0.9, float("nan"), 0.4][e]})
    best.on_train_end()
    assert (_state(tmp_path)["best"], _state(tmp_path)["best_epoch"]) == (0.4,
                                                                          2)


def test_best_checkpoint_validates_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'max' or 'min'"):
        callbacks.BestModelCheckpoint(str(tmp_path / "m.keras"), mode="auto")
    with pytest.raises(ValueError, match="must end in .keras"):
        callbacks.BestModelCheckpoint(str(tmp_path / "m.h5"))
    best = _checkpoint(tmp_path, monitor="val_auc")
    with pytest.raises(ValueError, match="'val_auc' is not in the training "
                       "logs; available: loss, val_loss"):
        best.on_epoch_end(0, {"loss": 1.0, "val_loss": 1.0})
    # An epoch without validation (validation_freq > 1) is skipped.
    best.on_epoch_end(0, {"loss": 1.0})
    assert best.best is None


def test_best_checkpoint_refuses_a_state_for_another_monitor(tmp_path):
    first = _checkpoint(tmp_path)
    _run_epochs(first, [0], lambda e: {"val_accuracy": 0.5})
    with pytest.raises(ValueError, match="tracks monitor='val_accuracy'"):
        callbacks.BestModelCheckpoint(str(tmp_path / "model.keras"),
                                       monitor="val_loss", mode="min")


def test_best_state_without_its_model_starts_over(tmp_path):
    first = _checkpoint(tmp_path)
    _run_epochs(first, [0], lambda e: {"val_accuracy": 0.9})
    first.on_train_end()
    os.remove(tmp_path / "model.keras")
    assert _checkpoint(tmp_path).best is None


# --------------------------------------------------------------------------
# ResumableBackupAndRestore, in process


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    return x, (x[:, :1] > 0).astype("float32")


def _model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


class _StopAt(keras.callbacks.Callback):
    """Simulates a crash at the start of an epoch."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("crash")


def test_backup_resumes_weights_optimizer_and_epoch(tmp_path):
    x, y = _data()
    backup_dir = str(tmp_path / "backup")
    model = _model()
    with pytest.raises(RuntimeError, match="crash"):
        model.fit(x, y, batch_size=8, epochs=5, verbose=0, callbacks=[
            _StopAt(3), callbacks.ResumableBackupAndRestore(backup_dir)])
    saved = [w.copy() for w in model.get_weights()]
    metadata = json.loads((tmp_path / "backup" /
                           "training_metadata.json").read_text())
    assert metadata["epoch"] == 3
    # One weights file: the committed one; older ones are removed.
    assert sorted(os.listdir(backup_dir)) == [metadata["weights"],
                                              "training_metadata.json"]

    restarted = _model()
    seen = []
    probe = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: seen.append(
            (epoch, int(restarted.optimizer.iterations.numpy()),
             [w.copy() for w in restarted.get_weights()])))
    history = restarted.fit(x, y, batch_size=8, epochs=5, verbose=0, callbacks=[
        probe, callbacks.ResumableBackupAndRestore(backup_dir)])
    assert history.epoch == [3, 4]
    first_epoch, iterations, weights = seen[0]
    assert first_epoch == 3
    assert iterations == 3 * 4  # Adam's step count came back too
    for a, b in zip(weights, saved):
        np.testing.assert_array_equal(a, b)
    # Kept after a finished run: running it again trains nothing.
    assert os.path.exists(os.path.join(backup_dir, "training_metadata.json"))
    assert _model().fit(x, y, batch_size=8, epochs=5, verbose=0, callbacks=[
        callbacks.ResumableBackupAndRestore(backup_dir)]).epoch == []


def test_backup_reads_a_stock_keras_backup(tmp_path):
    x, y = _data()
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(RuntimeError):
        _model().fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[
            _StopAt(2), keras.callbacks.BackupAndRestore(backup_dir)])
    history = _model().fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[
        callbacks.ResumableBackupAndRestore(backup_dir)])
    assert history.epoch == [2, 3]


def test_non_chief_restores_from_backup_dir_but_writes_elsewhere(tmp_path):
    x, y = _data()
    chief_dir, own_dir = str(tmp_path / "backup"), str(tmp_path / "own")
    with pytest.raises(RuntimeError):
        _model().fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[
            _StopAt(2), callbacks.ResumableBackupAndRestore(chief_dir)])
    before = sorted(os.listdir(chief_dir))
    history = _model().fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[
        callbacks.ResumableBackupAndRestore(chief_dir, write_dir=own_dir)])
    assert history.epoch == [2, 3]
    assert sorted(os.listdir(chief_dir)) == before
    assert json.loads(open(os.path.join(
        own_dir, "training_metadata.json")).read())["epoch"] == 4


def test_backup_records_fingerprint_and_seconds_summed_over_attempts(tmp_path):
    x, y = _data()
    backup_dir = str(tmp_path / "backup")
    fingerprint = {"settings": {"learning_rate": 0.01}, "split_digest": "abc"}
    first = callbacks.ResumableBackupAndRestore(backup_dir, fingerprint=fingerprint,
                                                 start_time=time.time() - 100)
    with pytest.raises(RuntimeError):
        _model().fit(x, y, batch_size=8, epochs=4, verbose=0,
                     callbacks=[_StopAt(2), first])
    metadata = callbacks.read_backup_metadata(backup_dir)
    assert metadata["fingerprint"] == fingerprint and metadata["epoch"] == 2
    assert 100 <= metadata["seconds"] < 130  # counted from the attempt's start
    assert first.seconds == pytest.approx(metadata["seconds"], abs=1e-3)
    # The resumed attempt adds its own time; a rerun of the finished job adds nothing.
    second = callbacks.ResumableBackupAndRestore(backup_dir, start_time=time.time() - 50)
    _model().fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[second])
    assert metadata["seconds"] + 50 <= second.seconds < metadata["seconds"] + 80
    third = callbacks.ResumableBackupAndRestore(backup_dir, start_time=time.time() - 50)
    assert _model().fit(x, y, batch_size=8, epochs=4, verbose=0,
                        callbacks=[third]).epoch == []
    assert third.seconds == pytest.approx(second.seconds, abs=1e-3)
    assert callbacks.read_backup_metadata(str(tmp_path / "none")) is None
    (tmp_path / "backup" / "training_metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match="Delete"):
        callbacks.read_backup_metadata(backup_dir)


# --------------------------------------------------------------------------
# PreemptionCallback, in process


class _SignalAt(keras.callbacks.Callback):

    def __init__(self, epoch, batch=None, during_validation=False):
        super().__init__()
        self.epoch, self.batch = epoch, batch
        self.during_validation = during_validation
        self._current = None

    def on_epoch_begin(self, epoch, logs=None):
        self._current = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self._current == self.epoch and batch == self.batch and
                not self.during_validation):
            os.kill(os.getpid(), signal.SIGTERM)

    def on_test_batch_begin(self, batch, logs=None):
        if self._current == self.epoch and self.during_validation and batch == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def _fit_with_preemption(tmp_path, signaller, epochs=4):
    x, y = _data()
    preemption = callbacks.PreemptionCallback()
    csv_path = tmp_path / "history.csv"
    fit_callbacks = [preemption, callbacks.ResumableCSVLogger(str(csv_path)),
                     signaller,
                     callbacks.ResumableBackupAndRestore(str(tmp_path / "b"))]
    model = _model()
    with pytest.raises(errors.TrainingPreempted) as e:
        model.fit(x, y, batch_size=8, epochs=epochs, verbose=0,
                  validation_data=(x, y), callbacks=fit_callbacks)
    return e.value, preemption, [r["epoch"] for r in _rows(csv_path)]


def test_sigterm_stops_after_the_current_step(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    stopped, preemption, epochs = _fit_with_preemption(
        tmp_path, _SignalAt(epoch=1, batch=2))
    assert (stopped.epoch, stopped.step) == (1, 2)
    assert preemption.requested
    assert "rerun the same command" in str(stopped)
    # The partial epoch 1 left no trace: no csv row, backup still at 1.
    assert epochs == ["0"]
    assert json.loads((tmp_path / "b" / "training_metadata.json").read_text()
                     )["epoch"] == 1
    assert signal.getsignal(signal.SIGTERM) == previous


def test_sigterm_during_validation_finishes_that_epoch(tmp_path):
    stopped, _, epochs = _fit_with_preemption(
        tmp_path, _SignalAt(epoch=1, during_validation=True))
    assert (stopped.epoch, stopped.step) == (2, None)
    assert epochs == ["0", "1"]
    assert json.loads((tmp_path / "b" / "training_metadata.json").read_text()
                     )["epoch"] == 2


def test_request_stops_without_a_signal_and_handlers_are_restored(tmp_path):
    x, y = _data()
    previous = signal.getsignal(signal.SIGTERM)
    preemption = callbacks.PreemptionCallback(check_every_n_steps=2)
    stop = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda batch, logs: batch == 0 and
        preemption.request("test"))
    with pytest.raises(errors.TrainingPreempted) as e:
        _model().fit(x, y, batch_size=8, epochs=2, verbose=0,
                     callbacks=[preemption, stop])
    assert (e.value.epoch, e.value.step) == (0, 1)  # checked every 2 steps
    assert signal.getsignal(signal.SIGTERM) == previous
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="check_every_n_steps"):
            callbacks.PreemptionCallback(check_every_n_steps=bad)

    history = _model().fit(x, y, batch_size=8, epochs=1, verbose=0,
                           callbacks=[callbacks.PreemptionCallback()])
    assert history.epoch == [0]
    assert signal.getsignal(signal.SIGTERM) == previous


def test_default_check_interval_is_cheap_for_multi_worker():
    assert callbacks.PreemptionCallback().check_every_n_steps == 1
    assert callbacks.PreemptionCallback(
        tf.distribute.get_strategy()).check_every_n_steps == 1
    assert callbacks.PreemptionCallback(
        FakeMultiWorker()).check_every_n_steps == 10
    assert callbacks.PreemptionCallback(
        FakeMultiWorker(), check_every_n_steps=1).check_every_n_steps == 1


# --------------------------------------------------------------------------
# Kill and restart a real training process


def _start_worker(model_dir, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    return subprocess.Popen(
        [sys.executable, RESUME_WORKER, str(model_dir), *args], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_epochs(proc, history, n, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        if history.exists():
            rows = history.read_text().splitlines()[1:]
            if len(rows) >= n:
                return
        if proc.poll() is not None:
            pytest.fail(f"worker exited early ({proc.returncode}): "
                        f"{proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("worker made no progress")
        time.sleep(0.05)


def _finish(proc, timeout=120):
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("worker did not finish")
    return proc.returncode, err


def _check_complete_run(model_dir, epochs):
    rows = _rows(model_dir / "history.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))
    values = [float(r["val_accuracy"]) for r in rows]
    state = json.loads((model_dir / "model.best.json").read_text())
    assert state["pending"] is None
    assert state["best"] == max(values)
    assert state["best_epoch"] == values.index(max(values))
    assert (model_dir / "model.keras").exists()
    assert not (model_dir / "model.pending.keras").exists()
    metadata = json.loads(
        (model_dir / "backup" / "training_metadata.json").read_text())
    assert metadata["epoch"] == epochs


EPOCHS = 5
ARGS = ("--epochs", str(EPOCHS), "--epoch_sleep", "0.5")


def test_sigkill_after_two_epochs_then_rerun_completes_each_epoch_once(
        tmp_path):
    model_dir = tmp_path / "run"
    proc = _start_worker(model_dir, *ARGS)
    _wait_for_epochs(proc, model_dir / "history.csv", 2)
    proc.kill()
    proc.wait()
    killed_rows = len(_rows(model_dir / "history.csv"))
    assert 2 <= killed_rows < EPOCHS

    code, err = _finish(_start_worker(model_dir, *ARGS))
    assert code == errors.EXIT_OK, err[-3000:]
    _check_complete_run(model_dir, EPOCHS)


@pytest.mark.slow  # the same restart path as above; SIGTERM itself is
# covered in process by test_sigterm_stops_after_the_current_step.
def test_sigterm_exits_preempted_and_rerun_completes(tmp_path):
    model_dir = tmp_path / "run"
    proc = _start_worker(model_dir, *ARGS)
    _wait_for_epochs(proc, model_dir / "history.csv", 2)
    proc.send_signal(signal.SIGTERM)
    code, err = _finish(proc)
    assert code == errors.EXIT_PREEMPTED, err[-3000:]
    assert "Training preempted" in err
    rows = _rows(model_dir / "history.csv")
    metadata = json.loads(
        (model_dir / "backup" / "training_metadata.json").read_text())
    assert len(rows) == metadata["epoch"] < EPOCHS  # every row is committed

    code, err = _finish(_start_worker(model_dir, *ARGS))
    assert code == errors.EXIT_OK, err[-3000:]
    _check_complete_run(model_dir, EPOCHS)


@pytest.mark.slow
def test_second_live_run_exits_locked_and_writes_nothing(tmp_path):
    model_dir = tmp_path / "run"
    first = _start_worker(model_dir, "--epochs", "40", "--epoch_sleep", "0.4")
    _wait_for_epochs(first, model_dir / "history.csv", 1)
    code, err = _finish(_start_worker(model_dir, *ARGS))
    assert code == errors.EXIT_LOCKED
    assert f"model_dir {model_dir} is in use" in err
    assert f"pid {first.pid} on host {socket.gethostname()}" in err
    first.send_signal(signal.SIGTERM)
    assert _finish(first)[0] == errors.EXIT_PREEMPTED
    rows = _rows(model_dir / "history.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(len(rows)))
