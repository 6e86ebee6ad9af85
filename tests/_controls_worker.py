"""Runs catdog stages and range tests in one process over N logical CPUs.

Usage: python _controls_worker.py SPEC_JSON RESULT_JSON

SPEC_JSON: ``{"logical_cpus": N, "runs": [run, ...]}``; each run names its
``train_dir``, ``val_dir``, ``model_dir`` and ``train`` settings (a
``catdog.config.TrainConfig`` field -> value), optionally ``"find_lr":
{"min_lr", "max_lr", "steps"}`` (a range test instead of training) and
``"backup_state": {callback state key: {counter: value}}`` (written into
the committed backup first, as if an earlier attempt had counted so).
The N logical CPU devices are set up before anything else, so
MirroredStrategy has N replicas on a CPU-only machine. RESULT_JSON gets,
per run, ``metrics`` (or the range test's result) or ``error``.
"""

import json
import os
import sys


def _config(run):
    from catdog import config as C  # pylint: disable=import-outside-toplevel
    c = C.for_stage("baseline")
    c.data.train_dir, c.data.val_dir = run["train_dir"], run["val_dir"]
    c.data.image_size, c.data.batch_size = (24, 24), 8
    c.train.model_dir, c.train.verbose = run["model_dir"], 0
    for key, value in run.get("train", {}).items():
        setattr(c.train, key, value)
    return c


def _patch_backup(model_dir, state):
    path = os.path.join(model_dir, "backup", "training_metadata.json")
    with open(path) as f:
        metadata = json.load(f)
    for key, counters in state.items():
        metadata["callbacks"][key].update(counters)
    with open(path, "w") as f:
        json.dump(metadata, f)


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    cpus = spec.get("logical_cpus", 0)
    if cpus:
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration() for _ in range(cpus)])
    from catdog import lr_finder, train  # pylint: disable=import-outside-toplevel
    results = []
    for run in spec["runs"]:
        try:
            if run.get("backup_state"):
                _patch_backup(run["model_dir"], run["backup_state"])
            if run.get("find_lr"):
                out = lr_finder.find_lr(_config(run), progress=False, **run["find_lr"])
            else:
                out = train.run(_config(run), progress=False).metrics
            results.append({"metrics": out, "error": None})
        except Exception as e:  # pylint: disable=broad-except
            results.append({"metrics": None, "error": f"{type(e).__name__}: {e}"})
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
