r"""Stage 2: the same CNN behind in-model RandomFlip / RandomRotation / RandomZoom.

Example:
  python scripts/train_augmented.py --train_dir=training_set --val_dir=test_set \
      --model_dir=runs/augmented

Every flag: --help. Results: see README.md ("Outputs").
"""


from absl import app
from absl import flags

from catdog import cli

cli.define_training_flags()
flags.adopt_module_key_flags(cli)

if __name__ == "__main__":
    app.run(cli.stage_script_main("augmented"), flags_parser=cli.parse_flags)
