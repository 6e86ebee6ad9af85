r"""Stage 1: the small CNN trained from scratch, no augmentation.

Example:
  python scripts/train_baseline.py --train_dir=training_set --val_dir=test_set \
      --model_dir=runs/baseline

Every flag: --help. Results: see README.md ("Outputs").
"""


from absl import app
from absl import flags

from catdog import cli

cli.define_training_flags()
flags.adopt_module_key_flags(cli)

if __name__ == "__main__":
    app.run(cli.stage_script_main("baseline"), flags_parser=cli.parse_flags)
