r"""Stage 4: stage 3's model with the backbone's top block unfrozen (needs --init_from).

Example:
  python scripts/train_fine_tuning.py --model_dir=runs/fine_tuning \
      --init_from=runs/feature_extraction

It validates on exactly the split of --init_from (its split.json); data flags
not given take that run's values, and one that would change the split is
refused (exit code 2).

Every flag: --help. Results: see README.md ("Outputs").
"""


from absl import app
from absl import flags

from catdog import cli

cli.define_training_flags()
flags.adopt_module_key_flags(cli)

if __name__ == "__main__":
    app.run(cli.stage_script_main("fine_tuning"), flags_parser=cli.parse_flags)
