r"""Peak memory of one training epoch of catdog's input pipeline.

Builds the training pipeline over a class folder with the given --cache and
iterates one epoch, then prints images, seconds to the first batch, and the
peak resident memory against the memory just before the epoch, as JSON.
Run once per setting (the peak is the process's high-water mark). Without
--cache=memory the peak should not grow with the number of images.

Example:
  python scripts/measure_input_memory.py --data_dir=training_set --cache=none
"""

import os
import runpy
import sys

# benchmarks/ is not part of the installed package: it is found beside scripts/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":
    # The measurement lives in <repo>/benchmarks, outside the installed package.
    # alter_sys=False: flags, help, messages and exit codes stay this script's.
    runpy.run_module("benchmarks.measure_memory", run_name="__main__", alter_sys=False)
