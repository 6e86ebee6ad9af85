r"""Write a folder of class subfolders (or a CSV's rows) into TFRecord shards with a manifest.

Examples:
  python scripts/build_tfrecords.py --data_dir=training_set --output_dir=shards/train
  python scripts/build_tfrecords.py --data_dir=test_set --output_dir=shards/val \
      --num_shards=2 --max_side=512
  python scripts/build_tfrecords.py --csv=labels.csv --image_dir=train \
      --output_dir=shards/train
  python scripts/build_tfrecords.py --data_dir=training_set --output_dir=shards/train224 \
      --image_size=224                          # stored at the training size (JPEG q90)
  python scripts/train_baseline.py --train_tfrecords='shards/train/*.tfrecord' \
      --val_tfrecords='shards/val/*.tfrecord' --model_dir=runs/baseline

Bad files are skipped and listed in manifest.json (with --csv, also every
unusable row, counted); source files are only read. With --image_size every
image is stored decoded and resized as training decodes it (--resize_mode,
--interpolation, --color_mode, --exif_orientation), re-encoded as JPEG or,
with --raw, as uint8 pixels; training at that size then skips the resize.
"""

import json

from absl import app
from absl import flags

from catdog import cli
from catdog.config import DEFAULT_MAX_PIXELS
from catdog.decode import COLOR_MODES, INTERPOLATIONS, RESIZE_MODES
from catdog.sources.tfrecord_writer import (AT_SIZE_JPEG_QUALITY, AUTO_CHROMA_MIN_SIDE,
                                            JPEG_CHROMA, MAX_SIDE_JPEG_QUALITY)

flags.DEFINE_string("data_dir", None,
                    "Folder with one subfolder of images per class.")
flags.DEFINE_string("csv", None,
                    "Instead of --data_dir: a CSV with a file name (or an id whose one "
                    "image file has that stem) and a label per row; the classes are its "
                    "labels, sorted, unless --class_names.")
flags.DEFINE_string("image_dir", None,
                    "With --csv: the folder its file names are relative to (default: "
                    "the CSV's folder); paths leaving it are never read.")
flags.DEFINE_string("filename_column", "",
                    "With --csv: its file name column (default: the first).")
flags.DEFINE_string("label_column", "",
                    "With --csv: its label column (default: the second).")
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
flags.DEFINE_integer("jpeg_quality", None,
                     "JPEG quality (1-100) of images re-encoded by --max_side or "
                     f"--image_size (default: {AT_SIZE_JPEG_QUALITY} at --image_size, where "
                     "the stored JPEG is decoded every first epoch and not resized again; "
                     f"{MAX_SIDE_JPEG_QUALITY} for --max_side, which training resizes again).")
flags.DEFINE_enum("jpeg_chroma", JPEG_CHROMA[0], JPEG_CHROMA,
                  "With --image_size (not --raw): the colour resolution of the stored "
                  "JPEGs. '444' keeps it full; '420' halves it both ways, as most "
                  "cameras do: a decode 10-20 percent cheaper, softer colour edges at small "
                  "sizes; 'auto' is '420' when both sides are at least "
                  f"{AUTO_CHROMA_MIN_SIDE} px and '444' below. The manifest records "
                  "the one stored.")
flags.DEFINE_string("image_size", None,
                    "Store every image at the training size 'SIZE' or 'HEIGHT,WIDTH': "
                    "decoded and resized exactly as training does (the flags below, "
                    "same meanings as for training), then re-encoded as JPEG "
                    "(--jpeg_quality) or kept as pixels (--raw). Training at this size "
                    "with the same decode flags reads them without a resize. "
                    "Excludes --max_side. Default: store the files as they are.")
flags.DEFINE_enum("resize_mode", "stretch", RESIZE_MODES,
                  "With --image_size: 'stretch', 'crop' or 'pad', as training's.")
flags.DEFINE_enum("interpolation", "bilinear", INTERPOLATIONS,
                  "With --image_size: the resize method, as training's.")
flags.DEFINE_enum("color_mode", "rgb", COLOR_MODES,
                  "With --image_size: 'rgb' or 'grayscale' pixels, as training's.")
flags.DEFINE_boolean("exif_orientation", True,
                     "With --image_size: turn JPEGs upright by their EXIF tag first, "
                     "as training's.")
flags.DEFINE_boolean("raw", False,
                     "With --image_size: store uint8 HxWxC pixels instead of a JPEG "
                     "(exactly training's pixels and no decode; at 224x224 about 6-8x the "
                     "bytes of a JPEG at quality 90-95).")
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
    from catdog.config import parse_image_size
    from catdog.decode import DecodeOptions
    if FLAGS.csv and FLAGS.data_dir:
        raise ValueError("Give --csv (labels from a CSV) or --data_dir (class folders), "
                         f"not both. Received: csv={FLAGS.csv!r}, data_dir={FLAGS.data_dir!r}")
    for name in ("image_dir", "filename_column", "label_column"):
        if FLAGS[name].value and not FLAGS.csv:
            raise ValueError(f"`--{name}` goes with --csv. "
                             f"Received: {name}={FLAGS[name].value!r}")
    at_size = ("resize_mode", "interpolation", "color_mode", "exif_orientation", "raw",
               "jpeg_chroma")
    for name in at_size:
        if FLAGS[name].present and not FLAGS.image_size:
            raise ValueError(f"`--{name}` says how images are stored at --image_size; "
                             f"give --image_size too. Received: {name}={FLAGS[name].value!r}, "
                             "image_size=None")
    image_size = parse_image_size(FLAGS.image_size) if FLAGS.image_size else None
    if not (FLAGS.data_dir or FLAGS.csv) or not FLAGS.output_dir:
        missing = "data_dir" if not (FLAGS.data_dir or FLAGS.csv) else "output_dir"
        raise ValueError(f"`--{missing}` is required. Received: {missing}=None")
    manifest = tfrecord_writer.write_tfrecords(
        (FLAGS.image_dir or "") if FLAGS.csv else FLAGS.data_dir, FLAGS.output_dir,
        num_shards=FLAGS.num_shards,
        max_side=FLAGS.max_side, jpeg_quality=FLAGS.jpeg_quality,
        jpeg_chroma=FLAGS.jpeg_chroma,
        image_size=image_size, raw=FLAGS.raw,
        decode_options=DecodeOptions(**{name: FLAGS[name].value for name in at_size[:4]}),
        class_names=FLAGS.class_names, prefix=FLAGS.prefix, seed=FLAGS.seed,
        max_pixels=FLAGS.max_pixels, csv_path=FLAGS.csv or "",
        filename_column=FLAGS.filename_column, label_column=FLAGS.label_column)
    print(json.dumps({k: manifest[k] for k in ("class_names", "num_examples", "counts")}))
    if manifest.get("csv_report"):
        from catdog.sources import csv_labels
        print("\n".join(csv_labels.problem_lines(manifest["csv_report"])))
    print(f"{len(manifest['shards'])} shard(s) and {tfrecord_writer.MANIFEST} in "
          f"{FLAGS.output_dir}; {len(manifest['skipped'])} file(s) skipped"
          + (" (listed in the manifest)." if manifest["skipped"] else "."), flush=True)


if __name__ == "__main__":
    app.run(cli.script_main(_build), flags_parser=cli.parse_flags)
