"""One worker of a two-worker MultiWorkerMirroredStrategy job (for tests).

Run by tests/test_distribute.py with TF_CONFIG set. Wires catdog's
distribute, callbacks, watchdog and lock the way a training script does, trains a
tiny model on deterministic random data with ``model.fit``, and writes
``RESULT_DIR/result-<task>.json`` (history, a hash of the final weights,
whether it is the chief, where it stopped). Exits with catdog's exit
codes.

Usage: python _mw_worker.py MODEL_DIR RESULT_DIR [--fix full|build|none]
           [--epochs N] [--step_sleep S] [--worker_timeout S] [--grace S]
           [--stall_task I --stall_epoch E --stall_seconds S]

``--stall_*`` makes task I sleep S seconds at the end of epoch E (a slow
phase outside any collective, like saving a large model), after writing
``RESULT_DIR/stalling-<I>``.
"""

import argparse
import hashlib
import json
import os
import sys
import time

from catdog import distribute
from catdog import keras_patches

GLOBAL_BATCH = 8


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("result_dir")
    parser.add_argument("--fix", choices=("full", "build", "none"),
                        default="full")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--step_sleep", type=float, default=0.0)
    parser.add_argument("--worker_timeout", type=float, default=120.0)
    parser.add_argument("--grace", type=float, default=30.0)
    parser.add_argument("--stall_task", type=int, default=-1)
    parser.add_argument("--stall_epoch", type=int, default=0)
    parser.add_argument("--stall_seconds", type=float, default=0.0)
    args = parser.parse_args()

    # The strategy must exist before any other TensorFlow op runs.
    strategy = distribute.build_strategy("multi_worker")
    import keras
    import numpy as np
    import tensorflow as tf
    from catdog import callbacks as callbacks_lib
    from catdog import errors
    from catdog import rundir
    from catdog import watchdog as watchdog_lib

    if args.fix != "none":
        assert keras_patches.apply_keras_multiworker_fix(strategy)
    if args.fix == "build":
        # Keep only the symbolic-build half, to show the log reduction bug.
        from keras.src.backend.tensorflow import trainer
        trainer.reduce_per_replica = keras_patches._originals["reduce"]  # pylint: disable=protected-access
    distribute.global_batch_check(GLOBAL_BATCH, strategy)
    # Watches the other worker from here on, as catdog.train.run does.
    watchdog = watchdog_lib.WorkerWatchdog(strategy, args.worker_timeout,
                                         grace_seconds=args.grace).start()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = (x[:, :1] + x[:, 1:2] > 0).astype("float32")
    train = distribute.with_shard_policy(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(
            GLOBAL_BATCH, drop_remainder=True), "DATA")
    val = distribute.with_shard_policy(
        tf.data.Dataset.from_tensor_slices((x[:32], y[:32])).batch(
            GLOBAL_BATCH, drop_remainder=True), "DATA")

    keras.utils.set_random_seed(1)
    with strategy.scope():
        model = keras.Sequential([
            keras.Input((6,)),
            keras.layers.Dense(4, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ])
        model.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss="binary_crossentropy", metrics=["accuracy"])

    task_index = strategy.cluster_resolver.task_id

    class Sleep(keras.callbacks.Callback):

        def on_train_batch_end(self, batch, logs=None):
            time.sleep(args.step_sleep)

        def on_epoch_end(self, epoch, logs=None):
            if task_index == args.stall_task and epoch == args.stall_epoch:
                open(os.path.join(args.result_dir, f"stalling-{task_index}"),
                     "w").close()
                time.sleep(args.stall_seconds)

    preemption = callbacks_lib.PreemptionCallback(strategy)
    stopped = None
    try:
        # The scratch dir is only touched while holding the lock: a second
        # job's task of the same name must not write into (or clean up) ours.
        with watchdog, rundir.ModelDirLock(
                args.model_dir, task=distribute.task_name(strategy)):
            out = distribute.artifact_dir(args.model_dir, strategy)
            callbacks = [
                preemption,
                watchdog,
                callbacks_lib.BestModelCheckpoint(os.path.join(out, "model.keras")),
                callbacks_lib.ResumableCSVLogger(os.path.join(out, "history.csv")),
                Sleep(),
                callbacks_lib.ResumableBackupAndRestore(
                    os.path.join(args.model_dir, "backup"),
                    write_dir=os.path.join(out, "backup")),
            ]
            try:
                history = model.fit(train, validation_data=val,
                                    epochs=args.epochs, callbacks=callbacks,
                                    verbose=0).history
            except errors.TrainingPreempted as e:
                stopped, history = [e.epoch, e.step], {}
            with open(os.path.join(out, "artifact.txt"), "w") as f:
                f.write(distribute.task_name(strategy) or "single")
            distribute.cleanup_artifact_dir(out, args.model_dir)
    except errors.WorkerLostError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(errors.EXIT_PREEMPTED)

    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    result = {
        "task": distribute.task_name(strategy),
        "is_chief": distribute.is_chief(strategy),
        "history": {k: [float(v) for v in vs] for k, vs in history.items()},
        "weights_sha256": digest.hexdigest(),
        "stopped": stopped,
        "requested": preemption.requested,
    }
    path = os.path.join(args.result_dir, f"result-{result['task']}.json")
    with open(path, "w") as f:
        json.dump(result, f)
    sys.exit(errors.EXIT_PREEMPTED if stopped else errors.EXIT_OK)


if __name__ == "__main__":
    main()
