"""Tests for catdog.rundir: the model_dir lock and the readers of a run's files."""

import json
import logging
import os
import socket
import subprocess

import pytest

from catdog import errors
from catdog import rundir



def _dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_second_run_is_refused_with_pid_and_host(tmp_path):
    model_dir = str(tmp_path / "run")
    with rundir.ModelDirLock(model_dir) as lock:
        assert lock.held
        body = json.loads((tmp_path / "run" / ".catdog.lock").read_text())
        assert body["pid"] == os.getpid()
        assert body["host"] == socket.gethostname()
        with pytest.raises(errors.ModelDirLockedError) as e:
            rundir.ModelDirLock(model_dir).acquire()
        msg = str(e.value)
        assert model_dir in msg
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in msg
        assert "--model_dir" in msg
    assert not lock.held
    # A clean release leaves an empty lock file and the lock free.
    assert (tmp_path / "run" / ".catdog.lock").read_text() == ""
    with rundir.ModelDirLock(model_dir):
        pass


def test_tasks_of_one_job_take_separate_locks(tmp_path):
    with rundir.ModelDirLock(str(tmp_path), task="worker-0"):
        with rundir.ModelDirLock(str(tmp_path), task="worker-1"):
            pass
        with pytest.raises(errors.ModelDirLockedError):
            rundir.ModelDirLock(str(tmp_path), task="worker-0").acquire()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    pid = _dead_pid()
    (tmp_path / ".catdog.lock").write_text(json.dumps(
        {"pid": pid, "host": socket.gethostname(), "started": "earlier"}))
    with caplog.at_level(logging.WARNING, logger="catdog.rundir"):
        with rundir.ModelDirLock(str(tmp_path)):
            body = json.loads((tmp_path / ".catdog.lock").read_text())
    assert body["pid"] == os.getpid()
    assert f"stale lock on model_dir {tmp_path}" in caplog.text
    assert f"pid {pid}" in caplog.text and "no longer running" in caplog.text


def test_lock_held_by_an_orphan_says_so(tmp_path):
    # The recorded holder is dead but the flock is still held (by a process
    # that inherited it): refuse, and say which pid is gone.
    with rundir.ModelDirLock(str(tmp_path)) as lock:
        pid = _dead_pid()
        os.pwrite(lock._fd, json.dumps(  # pylint: disable=protected-access
            {"pid": pid, "host": socket.gethostname()}).encode().ljust(200),
                  0)
        with pytest.raises(errors.ModelDirLockedError,
                           match=f"Pid {pid} is gone"):
            rundir.ModelDirLock(str(tmp_path)).acquire()


def test_forked_children_do_not_keep_the_lock(tmp_path):
    lock = rundir.ModelDirLock(str(tmp_path)).acquire()
    fd = lock._fd  # pylint: disable=protected-access
    try:
        pid = os.fork()
        if pid == 0:  # child: its copy of the lock fd must be closed
            try:
                os.fstat(fd)
                os._exit(1)
            except OSError:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        lock.release()


def test_lock_never_deletes_files(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"jpeg")
    with rundir.ModelDirLock(str(tmp_path)):
        pass
    assert (tmp_path / "photo.jpg").read_bytes() == b"jpeg"
    assert (tmp_path / ".catdog.lock").exists()


def test_read_config_names_a_corrupt_file_and_what_to_do(tmp_path):
    (tmp_path / rundir.CONFIG_FILE).write_text('{"data": {}, "class_names": ["a", "b"]}')
    assert rundir.read_config(str(tmp_path))["class_names"] == ["a", "b"]
    (tmp_path / rundir.CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="is not a readable JSON config.*Re-run training"):
        rundir.read_config(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        rundir.read_config(str(tmp_path / "nowhere"))


def test_history_is_read_back_and_summarized(tmp_path):
    path = tmp_path / rundir.HISTORY_FILE
    assert rundir.read_history(str(path)) == []
    assert rundir.summarize_history([])["epochs_completed"] == 0
    path.write_text("epoch,accuracy,val_accuracy\n0,0.5,0.6\n1,0.7,0.8\n2,0.9,0.7\n")
    rows = rundir.read_history(str(path))
    assert rows[1] == {"epoch": 1, "accuracy": 0.7, "val_accuracy": 0.8}
    assert rundir.summarize_history(rows) == {
        "best_val_accuracy": 0.8, "best_epoch": 2, "final_val_accuracy": 0.7,
        "epochs_completed": 3}


def test_versions_name_the_libraries_a_result_depends_on():
    import catdog  # pylint: disable=import-outside-toplevel
    versions = rundir.versions()
    assert versions["catdog"] == catdog.__version__
    assert {"python", "tensorflow", "keras", "numpy", "absl"} <= set(versions)
