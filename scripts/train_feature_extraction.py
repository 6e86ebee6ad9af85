r"""Stage 3: augmentation -> frozen ImageNet backbone -> new head.

Example:
  python scripts/train_feature_extraction.py --train_dir=training_set --val_dir=test_set \
      --model_dir=runs/feature_extraction

Every flag: --help. Results: see README.md ("Outputs").
"""

import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from catdog import cli  # noqa: E402  (after the path set-up above)

cli.define_training_flags()
flags.adopt_module_key_flags(cli)

if __name__ == "__main__":
    app.run(cli.stage_script_main("feature_extraction"), flags_parser=cli.parse_flags)
