"""catdog: tf.data input and the four-stage image-classification recipe.

The library is importable and flag-free: nothing here reads absl flags or
downloads anything at import time. Scripts under ``scripts/`` are thin layers
that turn flags into a config and call one library function.
"""

__version__ = "0.1.0"
