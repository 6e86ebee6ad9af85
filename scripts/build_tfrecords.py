r"""Write a folder of class subfolders into TFRecord shards with a manifest.

Examples:
  python scripts/build_tfrecords.py --data_dir=training_set --output_dir=shards/train
  python scripts/build_tfrecords.py --data_dir=test_set --output_dir=shards/val \
      --num_shards=2 --max_side=512
  python scripts/train_baseline.py --train_tfrecords='shards/train/*.tfrecord' \
      --val_tfrecords='shards/val/*.tfrecord' --model_dir=runs/baseline

Bad files are skipped and listed in manifest.json; source files are only read.
"""

import json

from absl import app
from absl import flags

from catdog import cli
from catdog.config import DEFAULT_MAX_PIXELS

flags.DEFINE_string("data_dir", None,
                    "Folder with one subfolder of images per class.")
flags.DEFINE_string("output_dir", None,
                    "Where the shards and manifest.json go (created; local or a "
                    "tf.io.gfile URL such as gs://bucket/shards/train).")
flags.DEFINE_integer("num_shards", 0,
                     "Number of shards; 0 picks about 128 MB per shard. Use at "
                     "least as many shards as workers that read them.")
flags.DEFINE_integer("max_side", 0,
                     "When > 0, images whose longest side exceeds it are downscaled "
                     "to it and re-encoded as JPEG (smaller shards, faster decode; "
                     "pixels then differ from the original files). 0 keeps every "
                     "file's bytes unchanged.")
flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality of images re-encoded by --max_side.")
flags.DEFINE_list("class_names", None,
                  "Class subfolder names in label order (default: all subfolders, "
                  "alphanumeric order). Use the same list for train and val shards.")
flags.DEFINE_string("prefix", "", "Shard file name prefix (default: the folder's name).")
flags.DEFINE_integer("seed", 1337, "Seed of the order files are dealt into shards.")
flags.DEFINE_integer("max_pixels", DEFAULT_MAX_PIXELS,
                     "Images whose header declares more pixels are skipped.")
FLAGS = flags.FLAGS


def _build():
    from catdog.sources import tfrecord_writer  # heavy import after flag parsing
    if not FLAGS.data_dir or not FLAGS.output_dir:
        missing = "data_dir" if not FLAGS.data_dir else "output_dir"
        raise ValueError(f"`--{missing}` is required. Received: {missing}=None")
    manifest = tfrecord_writer.write_tfrecords(
        FLAGS.data_dir, FLAGS.output_dir, num_shards=FLAGS.num_shards,
        max_side=FLAGS.max_side, jpeg_quality=FLAGS.jpeg_quality,
        class_names=FLAGS.class_names, prefix=FLAGS.prefix, seed=FLAGS.seed,
        max_pixels=FLAGS.max_pixels)
    print(json.dumps({k: manifest[k] for k in ("class_names", "num_examples", "counts")}))
    print(f"{len(manifest['shards'])} shard(s) and {tfrecord_writer.MANIFEST} in "
          f"{FLAGS.output_dir}; {len(manifest['skipped'])} file(s) skipped"
          + (" (listed in the manifest)." if manifest["skipped"] else "."), flush=True)


if __name__ == "__main__":
    app.run(cli.script_main(_build), flags_parser=cli.parse_flags)
