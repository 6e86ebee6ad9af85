"""Tests for catdog.watchdog: a lost worker of a multi-worker job stops this one.

The peer health checks and the watchdog's actions are faked; real
multi-worker jobs that lose a worker run in tests/test_distribute.py and
tests/test_cluster.py.
"""

import time
import types

import pytest
import tensorflow as tf

from catdog import errors
from catdog import watchdog as watchdog_lib
from helpers import FakeMultiWorker


@pytest.fixture
def peers(monkeypatch):
    """Fakes the peer health checks and the actions of a firing watchdog."""
    state = types.SimpleNamespace(down=set(), checked=[], aborted=[], exits=[])

    def check(device, timeout_seconds):
        state.checked.append(device)
        if device in state.down:
            raise tf.errors.UnavailableError(None, None, "Connection refused")

    monkeypatch.setattr(watchdog_lib, "_check_peer", check)
    monkeypatch.setattr(watchdog_lib, "_abort_collectives",
                        lambda message: state.aborted.append(message))
    monkeypatch.setattr(watchdog_lib, "_hard_exit",
                        lambda code: state.exits.append(code))
    return state


def test_watchdog_does_nothing_outside_multi_worker(peers):
    watchdog = watchdog_lib.WorkerWatchdog(tf.distribute.get_strategy(), 0.1)
    with pytest.raises(tf.errors.UnavailableError):
        with watchdog:
            assert not watchdog.watching
            raise tf.errors.UnavailableError(None, None, "not about workers")
    assert peers.checked == []


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "60"])
def test_watchdog_timeout_must_be_positive(bad):
    with pytest.raises(ValueError, match="--worker_timeout_seconds"):
        watchdog_lib.WorkerWatchdog(tf.distribute.get_strategy(), bad)


def test_silent_worker_is_declared_gone_after_the_timeout(peers):
    peers.down.add("/job:worker/replica:0/task:1")
    watchdog = watchdog_lib.WorkerWatchdog(FakeMultiWorker(task_id=0), 0.6,
                                         grace_seconds=0.2).start()
    try:
        assert watchdog.watching
        deadline = time.monotonic() + 10
        while not peers.exits and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watchdog.stop()
    assert peers.exits == [errors.EXIT_PREEMPTED]
    assert len(peers.aborted) == 1
    message = peers.aborted[0]
    assert "worker-1 (127.0.0.1:2)" in message and "is gone" in message
    assert "--worker_timeout_seconds" in message and "rerun" in message
    assert watchdog.lost == ["worker-1"]


def test_answering_worker_is_never_declared_gone(peers):
    watchdog = watchdog_lib.WorkerWatchdog(FakeMultiWorker(task_id=1), 0.3,
                                         grace_seconds=0.1).start()
    time.sleep(1.5)
    watchdog.stop()
    assert "/job:worker/replica:0/task:0" in peers.checked
    assert "/job:worker/replica:0/task:1" not in peers.checked  # not itself
    assert peers.aborted == [] and peers.exits == [] and watchdog.lost == []


def test_watchdog_stops_at_the_end_of_fit(peers):
    peers.down.add("/job:worker/replica:0/task:1")
    watchdog = watchdog_lib.WorkerWatchdog(FakeMultiWorker(task_id=0), 0.3,
                                         grace_seconds=0.1).start()
    watchdog.on_train_end()  # the last collective is behind: peers may exit
    time.sleep(1.0)
    assert not watchdog.watching and peers.exits == []


@pytest.mark.parametrize("error", [
    tf.errors.UnavailableError(None, None, "Collective ops is aborted by: Socket closed"),
    tf.errors.DeadlineExceededError(None, None, "Collective ops is aborted by: Deadline Exceeded"),
])
def test_collective_failure_names_the_worker_that_is_gone(peers, error):
    peers.down.add("/job:worker/replica:0/task:0")
    watchdog = watchdog_lib.WorkerWatchdog(FakeMultiWorker(task_id=1), 3600, grace_seconds=0.3)
    with pytest.raises(errors.WorkerLostError) as e:
        with watchdog:
            raise error
    assert "worker-0 (127.0.0.1:1)" in str(e.value) and "rerun" in str(e.value)
    assert e.value.__cause__ is error
    assert not watchdog.watching
    # Its collectives are aborted for good: however long TensorFlow's
    # shutdown takes, the process ends within the grace period.
    assert peers.exits == []
    deadline = time.monotonic() + 5
    while not peers.exits and time.monotonic() < deadline:
        time.sleep(0.05)
    assert peers.exits == [errors.EXIT_PREEMPTED]


def test_other_errors_pass_through_the_watchdog(peers):
    with pytest.raises(ValueError, match="bad data"):
        with watchdog_lib.WorkerWatchdog(FakeMultiWorker(task_id=0), 3600):
            raise ValueError("bad data")


def test_one_failed_check_after_a_stall_is_not_a_lost_worker(peers, monkeypatch):
    calls = []

    def check(device, timeout_seconds):
        calls.append(device)
        if len(calls) == 1:
            # This process could not run the check for longer than the
            # timeout (busy, swapped out), and then one check fails.
            time.sleep(1.0)
            raise tf.errors.UnavailableError(None, None, "Connection reset")

    monkeypatch.setattr(watchdog_lib, "_check_peer", check)
    watchdog = watchdog_lib.WorkerWatchdog(FakeMultiWorker(task_id=0), 0.6,
                                         grace_seconds=0.1).start()
    time.sleep(2.5)
    watchdog.stop()
    assert len(calls) > 3
    assert peers.aborted == [] and peers.exits == [] and watchdog.lost == []


def test_lost_worker_message_keeps_the_reason_of_a_multi_line_tf_error(peers):
    # TensorFlow puts the function name in front, sometimes on a line of its own.
    peers.down.add("/job:worker/replica:0/task:0")
    error = tf.errors.UnavailableError(
        None, None, "{{function_node __inference_step_42}}\n"
                    "Collective ops is aborted by: Socket closed\n[[{{node x}}]]")
    with pytest.raises(errors.WorkerLostError) as e:
        with watchdog_lib.WorkerWatchdog(FakeMultiWorker(task_id=1), 3600, grace_seconds=0.1):
            raise error
    assert "TensorFlow: Collective ops is aborted by: Socket closed." in str(e.value)
    # The exit it schedules fires while the fake exit is still in place.
    deadline = time.monotonic() + 5
    while not peers.exits and time.monotonic() < deadline:
        time.sleep(0.05)
    assert peers.exits == [errors.EXIT_PREEMPTED]


def _stalling_fit(stall_at, seconds, guard, validation_stall=0.0):
    """``fit`` one epoch of 6 steps whose training batch ``stall_at`` takes
    ``seconds`` to arrive (and, with ``validation_stall``, a slow validation)."""
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    def slow(i, wait):
        def delay(i):
            if int(i) == wait[0]:
                time.sleep(wait[1])
            return i
        return tf.py_function(delay, [i], tf.int64)

    def batches(wait):
        ds = tf.data.Dataset.range(6).map(lambda i: slow(i, wait))
        return ds.map(lambda i: (tf.fill([2, 3], tf.cast(i, tf.float32)),
                                 tf.zeros([2, 1])))

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(batches((stall_at, seconds)), epochs=1, verbose=0, callbacks=[guard],
              validation_data=batches((0, validation_stall)))
    return np.array(0)


def test_stalled_service_input_stops_training_with_exit_75(peers):
    guard = watchdog_lib.InputStallGuard("grpc://dispatcher:5050", 0.5)
    _stalling_fit(stall_at=3, seconds=2.5, guard=guard)
    assert peers.exits == [errors.EXIT_PREEMPTED]
    message = guard.message
    assert "grpc://dispatcher:5050" in message and "0.5 s" in message
    assert "--data_service_timeout_seconds" in message and "rerun" in message
    assert not guard.watching  # stopped with fit


def test_service_input_in_time_and_slow_validation_never_stop_training(peers):
    guard = watchdog_lib.InputStallGuard("grpc://dispatcher:5050", 0.8)
    # Every training batch arrives within 0.3 s; validation (local input,
    # not timed) takes 2 s.
    _stalling_fit(stall_at=2, seconds=0.3, guard=guard, validation_stall=2.0)
    assert peers.exits == [] and guard.message is None


def test_a_slow_first_step_is_not_taken_for_a_lost_worker(peers):
    """The first step of a fit also traces (and under XLA compiles) the
    training step: on a loaded machine it outlasts a timeout that every
    later step meets, and stopping there would end a healthy run."""
    guard = watchdog_lib.InputStallGuard("grpc://dispatcher:5050", 0.5)
    assert guard.first_step_seconds == watchdog_lib.FIRST_STEP_MIN_SECONDS
    _stalling_fit(stall_at=0, seconds=2.0, guard=guard)
    assert peers.exits == [] and guard.message is None


def test_a_first_step_past_its_own_limit_still_stops_the_run(peers):
    guard = watchdog_lib.InputStallGuard("grpc://dispatcher:5050", 0.5,
                                         first_step_seconds=1.0)
    _stalling_fit(stall_at=0, seconds=3.0, guard=guard)
    assert peers.exits == [errors.EXIT_PREEMPTED]
    assert "first training batch" in guard.message and "1 s" in guard.message


def test_a_timeout_longer_than_the_first_step_floor_applies_to_the_first_step_too():
    guard = watchdog_lib.InputStallGuard("grpc://dispatcher:5050", 3600)
    assert guard.first_step_seconds == 3600


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "60"])
def test_input_stall_timeout_must_be_positive(bad):
    with pytest.raises(ValueError, match="--data_service_timeout_seconds"):
        watchdog_lib.InputStallGuard("grpc://dispatcher:5050", bad)
