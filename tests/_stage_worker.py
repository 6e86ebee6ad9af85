"""Runs one catdog stage in a subprocess, for the cluster tests.

Usage: python _stage_worker.py RESULT_JSON [--logical_cpus N] -- FLAGS...

Sets up N logical CPU devices first (so MirroredStrategy has replicas on a
CPU-only machine), then trains exactly as a stage script does and writes
the exit code and a hash of the final weights to RESULT_JSON.
"""

import hashlib
import json
import sys


def main():
    result_path = sys.argv[1]
    argv = sys.argv[2:]
    cpus = 0
    if argv[:1] == ["--logical_cpus"]:
        cpus, argv = int(argv[1]), argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    import tensorflow as tf
    if cpus:
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration() for _ in range(cpus)])
    from absl import flags
    import logging
    import numpy as np
    # The cluster tests read catdog's own log lines (e.g. resuming a backup).
    logging.getLogger("catdog").setLevel(logging.INFO)
    from catdog import cli, train
    cli.define_training_flags()
    flags.FLAGS(["stage_worker"] + argv)
    config = cli.config_from_flags("baseline")
    out = {}

    def fit():
        result = train.run(config)
        digest = hashlib.sha256()
        for w in result.model.get_weights():
            digest.update(np.ascontiguousarray(w).tobytes())
        out["weights_sha256"] = digest.hexdigest()
        out["metrics"] = result.metrics

    code = cli.run_main(fit)
    out["exit_code"] = code
    with open(result_path, "w") as f:
        json.dump(out, f)
    sys.exit(code)


if __name__ == "__main__":
    main()
