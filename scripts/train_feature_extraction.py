r"""Stage 3: augmentation -> frozen ImageNet backbone -> new head.

Example:
  python scripts/train_feature_extraction.py --train_dir=training_set --val_dir=test_set \
      --model_dir=runs/feature_extraction

Every flag: --help. Results: see README.md ("Outputs").
"""


from absl import app
from absl import flags

from catdog import cli

cli.define_training_flags()
flags.adopt_module_key_flags(cli)

if __name__ == "__main__":
    app.run(cli.stage_script_main("feature_extraction"), flags_parser=cli.parse_flags)
