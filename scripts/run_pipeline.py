r"""The main job: train the four stages in order and compare them.

Runs baseline -> augmented -> feature_extraction -> fine_tuning into
subfolders of --model_dir (fine_tuning starts from feature_extraction), then
prints and writes comparison.md, comparison.json and comparison.png.

Without --train_dir (or --train_csv / --train_tfrecords / --tfds_name) it runs
the built-in demo: it writes a small deterministic two-class image folder and
trains every stage at a small image size in a few minutes on a laptop CPU.

Without --cache the stages share one file cache of the decoded images in
<model_dir>/cache, so the job decodes each image once (--cache=memory given
explicitly: a memory cache per stage, each decoding again).

Examples:
  python scripts/run_pipeline.py                       # the demo
  python scripts/run_pipeline.py --train_dir=training_set --val_dir=test_set \
      --model_dir=runs/catdog --backbone=vgg16
"""

import os

from absl import app
from absl import flags

from catdog import cli

cli.define_training_flags()
flags.adopt_module_key_flags(cli)
flags.DEFINE_list("stages", ["baseline", "augmented", "feature_extraction", "fine_tuning"],
                  "Stages to run, in order.")
flags.DEFINE_string("demo_dir", None,
                    "Where the demo writes its generated images (default: "
                    "<model_dir>/demo_data). Used only without --train_dir.")
FLAGS = flags.FLAGS

DEMO_MODEL_DIR = "runs/demo"
DEMO_IMAGE_SIZE = "64"
DEMO_EPOCHS = {"baseline": 6, "augmented": 6, "feature_extraction": 3, "fine_tuning": 2}


def _run():
    from catdog import config as config_lib
    from catdog import demo
    from catdog import stages as stages_lib
    is_demo = not (FLAGS.train_dir or FLAGS.train_tfrecords or FLAGS.tfds_name
                    or FLAGS.train_csv)
    if is_demo:
        if FLAGS.model_dir is None:
            FLAGS.model_dir = DEMO_MODEL_DIR
        if not FLAGS["image_size"].present:
            FLAGS.image_size = DEMO_IMAGE_SIZE
        demo_dir = FLAGS.demo_dir or os.path.join(FLAGS.model_dir, "demo_data")
        dirs = demo.make_demo_folder(demo_dir)
        FLAGS.train_dir, FLAGS.val_dir = dirs["train_dir"], dirs["val_dir"]
        print(f"Demo: no --train_dir given; training on generated images in {demo_dir} "
              f"into {FLAGS.model_dir}", flush=True)
    base = cli.config_from_flags("baseline", FLAGS)
    base.train.model_dir = FLAGS.model_dir or ""
    base.model.init_from = ""
    if not base.train.model_dir:
        raise ValueError("`--model_dir` must name a folder for the results. "
                         "Received: model_dir=None")
    # A preset setting given on the command line applies to every stage; the
    # others are each stage's preset's.
    settings = {name: config_lib.preset_value(base, name)
                for name in config_lib.PRESET_SETTINGS if FLAGS[name].value is not None}
    epochs = DEMO_EPOCHS if is_demo and "epochs" not in settings else None
    # --cache given (on the command line or in a --flagfile) is used as
    # given; left out, the stages share one file cache in the job's model dir,
    # and flags.txt leaves it out too so a rerun from it does the same.
    cache_given = FLAGS["cache"].present
    cli.write_flagfile(base.train.model_dir, FLAGS, omit=() if cache_given else ("cache",))
    stages_lib.run_pipeline(base, base.train.model_dir, stages=FLAGS.stages, epochs=epochs,
                          fallback_to_random_weights=is_demo, augment=FLAGS.augment,
                          settings=settings, share_cache=not cache_given)


if __name__ == "__main__":
    app.run(cli.script_main(_run), flags_parser=cli.parse_flags)
