"""Runs one training stage and records which images the model consumed.

Usage: python _input_worker.py RESULT_JSON -- FLAGS...

For the multi-worker input tests. Trains exactly as a stage script does
(``catdog.train.run`` with the flags given), except that the model is a tiny
network whose first layer records, at every training and evaluation step,
the id of each image it receives. The images are PNGs written by
``tests/test_cluster.py`` whose pixels encode their id (red + 256 * green,
at their own size, so the resize is the identity). RESULT_JSON gets the
exit code, the metrics and the recorded steps ``[mode, [ids...]]`` in the
order they ran.
"""

import json
import sys


def main():
    result_path = sys.argv[1]
    argv = sys.argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    from absl import flags
    import keras
    import tensorflow as tf
    from catdog import cli, models, train

    steps = []

    def record(ids, training):
        steps.append(["train" if bool(training.numpy()) else "eval",
                      [int(i) for i in ids.numpy()]])
        return ids

    @keras.saving.register_keras_serializable(package="catdog_tests")
    class RecordIds(keras.layers.Layer):
        """Identity on the images; records the id of each one."""

        def call(self, images, training=None):
            pixel = tf.cast(images[:, 0, 0, :2], tf.int64)
            ids = pixel[:, 0] + 256 * pixel[:, 1]
            done = tf.py_function(record, [ids, tf.constant(bool(training))], tf.int64)
            with tf.control_dependencies([done]):
                return tf.identity(images)

    def recording_model(config, num_classes):
        inputs = keras.Input((*config.data.image_size, 3), dtype="uint8")
        x = RecordIds()(inputs)
        x = keras.layers.Rescaling(1 / 255.0)(keras.ops.cast(x, "float32"))
        x = keras.layers.Flatten()(x)
        outputs = keras.layers.Dense(1, activation="sigmoid")(x)
        return keras.Model(inputs, outputs)

    models.build_model = recording_model
    cli.define_training_flags()
    flags.FLAGS(["input_worker"] + argv)
    config = cli.config_from_flags("baseline")
    out = {}

    def fit():
        out["metrics"] = train.run(config, progress=False).metrics

    code = cli.run_main(fit)
    out["exit_code"] = code
    out["steps"] = steps
    with open(result_path, "w") as f:
        json.dump(out, f)
    sys.exit(code)


if __name__ == "__main__":
    main()
