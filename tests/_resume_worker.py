"""A tiny restartable training job (for tests/test_callbacks.py).

Trains a small model on deterministic random data with ``model.fit`` and the
catdog callbacks and model_dir lock, exactly as a training script wires them, and
exits with the documented exit code. Running it again with the same command
resumes.

Usage: python _resume_worker.py MODEL_DIR [--epochs N] [--epoch_sleep S]
"""

import argparse
import os
import sys
import time


import keras
import numpy as np

from catdog import callbacks as callbacks_lib
from catdog import errors
from catdog import rundir


class _Slow(keras.callbacks.Callback):
    """Makes each epoch take a while so a test can signal mid-training."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(self.seconds / 4)


def train(model_dir, epochs, epoch_sleep):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = (x[:, :1] - x[:, 2:3] > 0).astype("float32")
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.02),
                  loss="binary_crossentropy", metrics=["accuracy"])
    callbacks = [
        callbacks_lib.PreemptionCallback(),
        callbacks_lib.BestModelCheckpoint(os.path.join(model_dir, "model.keras")),
        callbacks_lib.ResumableCSVLogger(os.path.join(model_dir, "history.csv")),
        _Slow(epoch_sleep),
        callbacks_lib.ResumableBackupAndRestore(os.path.join(model_dir, "backup")),
    ]
    # 48 training samples in batches of 12: 4 steps per epoch.
    model.fit(x[:48], y[:48], batch_size=12, validation_data=(x[48:], y[48:]),
              epochs=epochs, callbacks=callbacks, verbose=0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--epoch_sleep", type=float, default=0.0)
    args = parser.parse_args()
    error = None
    try:
        with rundir.ModelDirLock(args.model_dir):
            train(args.model_dir, args.epochs, args.epoch_sleep)
    except (errors.TrainingPreempted, errors.ModelDirLockedError) as e:
        print(e, file=sys.stderr)
        error = e
    sys.exit(errors.exit_code_for(error))


if __name__ == "__main__":
    main()
