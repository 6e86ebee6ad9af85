"""Tests for catdog.errors: exit codes, the errors they stand for, messages."""

import tensorflow as tf

from catdog import errors


def test_exit_codes_are_distinct_and_documented():
    assert (errors.EXIT_OK, errors.EXIT_FAILURE, errors.EXIT_USAGE,
            errors.EXIT_LOCKED, errors.EXIT_PREEMPTED) == (0, 1, 2, 73,
                                                                   75)
    assert errors.exit_code_for(None) == 0
    assert errors.exit_code_for(errors.TrainingPreempted(3, 1)) == 75
    assert errors.exit_code_for(
        errors.ModelDirLockedError("x")) == 73
    assert errors.exit_code_for(RuntimeError("x")) == 1
    # What the scripts exit with: bad flags or data, found before training.
    assert errors.exit_code_for(ValueError("x")) == 2
    assert errors.exit_code_for(FileNotFoundError("x")) == 2
    assert errors.exit_code_for(KeyboardInterrupt()) == 1
    for name in ("EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_LOCKED",
                 "EXIT_PREEMPTED"):
        assert name in errors.__doc__


def test_worker_lost_exits_75_to_be_rerun():
    error = errors.WorkerLostError("worker-1 is gone")
    assert errors.exit_code_for(error) == errors.EXIT_PREEMPTED
    assert "WorkerLostError" in errors.__doc__


def test_first_line_drops_tensorflow_function_names():
    error = tf.errors.InvalidArgumentError(
        None, None, "{{function_node __wrapped__DecodeImage_device_/job:localhost}} "
                    "Unknown image file format.\n\t [[{{node DecodeImage}}]]")
    assert errors.first_line(error) == "Unknown image file format."
    own_line = RuntimeError("{{function_node __inference_step}}\nSocket closed\nmore")
    assert errors.first_line(own_line) == "Socket closed"
    assert errors.first_line(ValueError("")) == "ValueError"
