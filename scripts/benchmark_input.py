r"""Benchmark catdog's input pipeline against the stock Keras loaders.

Times, in one run on the same folder: ImageDataGenerator, stock
image_dataset_from_directory (plain and cached), catdog (first and cached
epoch, the one-off file check apart; with --train_tfrecords also from
shards; with --shards_at_size from shards of the folder stored at --image_size,
JPEG and raw, built in the run with the build time printed apart, and their
ratio to stock Keras from the folder; with --data_service_workers=1,2 an epoch
through a local tf.data service with 1 and 2 in-process workers) and the
decode ceiling; prints a table
with the ratios and writes the figures as JSON. The page cache is warmed
first so every loader reads from memory. Other load on the machine skews
the figures: compare ratios from one run, and rerun.

With --model_dir=RUN it also times that run's training step (forward,
backward, optimizer update, compiled as the run compiled it) on in-memory
batches of the same shape and prints whether the input or the model is the
bottleneck. --scale=1000,10000,100000 instead times listing, the file check
(cold and warm cache) and the split on generated JPEGs in a temporary folder,
with files/s and peak extra memory per phase.

Examples:
  python scripts/benchmark_input.py --data_dir=training_set --json_out=bench.json --augment
  python scripts/benchmark_input.py --data_dir=training_set --model_dir=runs/augmented
  python scripts/benchmark_input.py --data_dir=training_set --shards_at_size
  python scripts/benchmark_input.py --scale=1000,10000,100000 --json_out=scale.json
"""

import os
import runpy
import sys

# benchmarks/ is not part of the installed package: it is found beside scripts/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":
    # The benchmark lives in <repo>/benchmarks, outside the installed package.
    # alter_sys=False: flags, help, messages and exit codes stay this script's.
    runpy.run_module("benchmarks", run_name="__main__", alter_sys=False)
