r"""Learning-rate range test: a suggested --learning_rate for a stage's model and data.

Trains the stage's model for --lr_find_steps steps while the rate grows
exponentially from --lr_find_min to --lr_find_max, then writes lr_find.png
(loss against rate) and lr_find.json (the curve and the suggested rate: the
steepest descent of the loss; also the rate of the minimum loss / 10) into
--model_dir. It takes every training flag (data, model, --optimizer), and
runs in one process: on one device or with --strategy=mirrored over the local
devices (--batch_size is the global batch, as in training); --strategy=
multi_worker or tpu exits with 2.

Example:
  python scripts/find_lr.py --stage=feature_extraction --train_dir=training_set \
      --val_dir=test_set --model_dir=runs/lr_find --backbone=mobilenet
"""

from absl import app
from absl import flags

from catdog import cli
from catdog import config as config_lib

cli.define_training_flags()
flags.adopt_module_key_flags(cli)
_STAGE = flags.DEFINE_enum("stage", "baseline", list(config_lib.STAGES),
                           "The stage whose model and data the test trains.")
_MIN = flags.DEFINE_float("lr_find_min", 1e-7, "The first learning rate of the test.")
_MAX = flags.DEFINE_float("lr_find_max", 1.0, "The last learning rate of the test.")
_STEPS = flags.DEFINE_integer("lr_find_steps", 100,
                              "Training steps from --lr_find_min to --lr_find_max.")


def _find():
    from catdog import lr_finder  # TensorFlow loads only after the flags are fine
    config = cli.config_from_flags(_STAGE.value)
    result = lr_finder.find_lr(config, _MIN.value, _MAX.value, _STEPS.value)
    print(f"Suggested --learning_rate={result['suggested_learning_rate']:.3g} "
          f"(minimum loss / 10: {result['min_loss_over_10']:.3g}); see "
          f"{config.train.model_dir}/{lr_finder.PNG_FILE}")


if __name__ == "__main__":
    app.run(cli.script_main(_find), flags_parser=cli.parse_flags)
