r"""The input-memory probe's main: flags and output are documented in
``scripts/measure_input_memory.py``, which runs it.
"""

import json

from absl import app
from absl import flags

from catdog import cli

flags.DEFINE_string("data_dir", None, "Folder with one subfolder of images per class.")
flags.DEFINE_string("image_size", "224", "Image size: 'SIZE' or 'HEIGHT,WIDTH'.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_string("cache", "none",
                    "'memory', 'none' or a folder for the file cache (emptied first).")
flags.DEFINE_integer("shuffle_buffer", 0, "As for training; 0: catdog's default.")
FLAGS = flags.FLAGS


def _run():
    from benchmarks import input_memory  # heavy import after flag parsing
    from catdog import config as config_lib
    from catdog import scan
    if not FLAGS.data_dir:
        raise ValueError("`--data_dir` is required. Received: data_dir=None")
    paths, labels, _ = scan.list_image_files(FLAGS.data_dir)
    result = input_memory.epoch_memory(paths, labels, config_lib.parse_image_size(
        FLAGS.image_size), FLAGS.batch_size, FLAGS.cache, FLAGS.shuffle_buffer)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    app.run(cli.script_main(_run), flags_parser=cli.parse_flags)
