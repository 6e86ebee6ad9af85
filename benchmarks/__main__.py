r"""The input benchmark's main: flags and output are documented in
``scripts/benchmark_input.py``, which runs it (``python -m benchmarks`` from the
checkout does the same).
"""

import json

from absl import app
from absl import flags

from catdog import cli
from catdog.sources.tfrecord_writer import JPEG_CHROMA

flags.DEFINE_string("data_dir", None, "Folder with one subfolder of images per class.")
flags.DEFINE_string("image_size", "224", "Image size: 'SIZE' or 'HEIGHT,WIDTH'.")
flags.DEFINE_integer("batch_size", 32, "Batch size of every loader.")
flags.DEFINE_string("json_out", None, "Write the figures to this JSON file.")
flags.DEFINE_boolean("augment", False,
                     "Also time ImageDataGenerator with flip/rotation/zoom and "
                     "catdog's in-model augmentation block on the same CPU.")
flags.DEFINE_integer("max_images", 0,
                     "Use at most this many images (balanced over classes); 0: all.")
flags.DEFINE_integer("repeats", 3,
                     "Timing rounds; loaders run round-robin and each figure is the "
                     "best round (other load only slows a loader down).")
flags.DEFINE_string("train_tfrecords", None,
                    "Also time catdog reading these TFRecord shards (a glob, as for "
                    "training; e.g. written from --data_dir by build_tfrecords.py).")
flags.DEFINE_boolean("shards_at_size", False,
                     "Also build TFRecord shards of --data_dir stored at --image_size "
                     "(build_tfrecords.py --image_size; JPEG and --raw) in a temporary "
                     "folder, print the build time apart, and time catdog's first epoch "
                     "from them against stock Keras from the folder (wall and per "
                     "CPU-second ratios).")
flags.DEFINE_integer("shards_jpeg_quality", None,
                     "JPEG quality of the --shards_at_size JPEG shards (1-100; default: "
                     "build_tfrecords.py's at --image_size, 90).")
flags.DEFINE_enum("shards_jpeg_chroma", JPEG_CHROMA[0], JPEG_CHROMA,
                  "Colour resolution of the --shards_at_size JPEG shards "
                  "(build_tfrecords.py --jpeg_chroma; 'auto': 4:2:0 from 128 px).")
flags.DEFINE_string("model_dir", None,
                    "A finished training run (model.keras + config.json): also time "
                    "its model's training step on batches of the same shape and say "
                    "whether the input or the model is the bottleneck. Without "
                    "--image_size / --batch_size the run's are used.")
flags.DEFINE_integer("model_steps", 10,
                     "Timed training steps of --model_dir's model (after 2 untimed).")
flags.DEFINE_string("scale", None,
                    "Scale mode instead of --data_dir: comma-separated file counts, "
                    "e.g. 1000,10000,100000; at each, small generated JPEGs in a "
                    "temporary folder (deleted afterwards) are listed, checked (cold "
                    "check cache, then warm) and split, printing files/s and peak "
                    "extra memory per phase.")
flags.DEFINE_list("data_service_workers", [],
                  "Also time an epoch of catdog through a local tf.data service "
                  "(dispatcher and workers in this process) with each of these "
                  "numbers of workers, e.g. '1,2'; empty: not timed.")
FLAGS = flags.FLAGS


def _run():
    if FLAGS.scale is not None:
        if FLAGS.data_dir or FLAGS.model_dir:
            raise ValueError("`--scale` generates its own files: pass it without "
                             "--data_dir and --model_dir. Received: "
                             f"scale={FLAGS.scale!r}, data_dir={FLAGS.data_dir!r}, "
                             f"model_dir={FLAGS.model_dir!r}")
        from benchmarks import input_scale  # pylint: disable=import-outside-toplevel
        counts = input_scale.parse_counts(FLAGS.scale)
        result = input_scale.run_scale(counts, log=lambda line: print(line, flush=True))
        print("\n" + input_scale.format_scale_table(result), flush=True)
        _write_json(result)
        return
    from benchmarks import input_benchmark as benchmark  # heavy import after flag parsing
    from catdog import config as config_lib
    if not FLAGS.data_dir:
        raise ValueError("`--data_dir` (or `--scale`) is required. Received: data_dir=None")
    try:
        service_workers = tuple(int(w) for w in FLAGS.data_service_workers)
    except ValueError:
        raise ValueError("`--data_service_workers` must be comma-separated numbers of "
                         "workers such as 1,2. Received: data_service_workers="
                         f"{','.join(FLAGS.data_service_workers)}") from None
    # With --model_dir, flags left at their defaults take the run's values.
    keep = lambda name: FLAGS[name].present or not FLAGS.model_dir
    size = config_lib.parse_image_size(FLAGS.image_size) if keep("image_size") else None
    result = benchmark.run_benchmark(FLAGS.data_dir, size,
                                     FLAGS.batch_size if keep("batch_size") else None,
                                     augment=FLAGS.augment, max_images=FLAGS.max_images,
                                     repeats=FLAGS.repeats,
                                     train_tfrecords=FLAGS.train_tfrecords or "",
                                     model_dir=FLAGS.model_dir or "",
                                     model_steps=FLAGS.model_steps,
                                     service_workers=service_workers,
                                     shards_at_size=FLAGS.shards_at_size,
                                     shards_jpeg_quality=FLAGS.shards_jpeg_quality,
                                     shards_jpeg_chroma=FLAGS.shards_jpeg_chroma,
                                     log=lambda line: print(line, flush=True))
    print("\n" + benchmark.format_table(result), flush=True)
    _write_json(result)


def _write_json(result):
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(f"\nFigures: {FLAGS.json_out}", flush=True)


if __name__ == "__main__":
    app.run(cli.script_main(_run), flags_parser=cli.parse_flags)
