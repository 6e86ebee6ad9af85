"""Exports a trained catdog model as a SavedModel for TF Serving (and TFLite).

Usage:
  export.py --model_dir=DIR --export_dir=DIR [--version=auto] [--tflite] [--overwrite]

The SavedModel decodes images itself: its `serving_default` signature takes
encoded JPEG/PNG/GIF/BMP bytes (`image_bytes`, `{"b64": ...}` over TF
Serving's REST API), `serve_images` takes uint8 images already resized. Both
return `probabilities`, `classes` and `class_names`.

With --version=auto (the default) --export_dir is the base folder TF Serving
watches and each export writes the next numeric version, DIR/1, DIR/2, ...;
--version=N writes DIR/N; --version=none writes the SavedModel into DIR.
Exports are atomic: a failed export leaves nothing behind.

Exit status: 0 on success, 1 when the export failed, 2 on usage errors (bad
flags, model_dir or export_dir).
"""

import os
import sys

from absl import app
from absl import flags

from catdog import cli

_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None,
    "Training run folder holding model.keras and config.json.", required=True)
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None,
    "Base folder of numeric versions (see --version) or, with "
    "--version=none, the SavedModel folder itself. Local paths only.",
    required=True)
_VERSION = flags.DEFINE_string(
    "version", "auto",
    "'auto': write the next free numeric version under --export_dir; an "
    "integer N >= 1: write --export_dir/N; 'none': write into --export_dir.")
_TFLITE = flags.DEFINE_bool(
    "tflite", False,
    "Also convert the serve_images signature to model.tflite in the version "
    "folder (input: uint8 images already resized).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False,
    "Replace an existing SavedModel at the target (atomically); without it "
    "an existing target is an error.")


def main(argv):
    refused = cli.refuse_positional(argv)
    if refused is not None:
        return refused
    version = _VERSION.value.strip().lower()
    if version == "none":
        version = None
    elif version != "auto":
        if not version.isdigit() or int(version) < 1:
            return cli.usage_error(
                f"--version must be 'auto', 'none' or an integer >= 1. "
                f"Received: --version={_VERSION.value}")
        version = int(version)

    # Imported here so usage errors are reported without loading TensorFlow.
    from catdog import export

    try:
        path = export.export_saved_model(
            _MODEL_DIR.value, _EXPORT_DIR.value, tflite=_TFLITE.value,
            overwrite=_OVERWRITE.value, version=version)
    except (ValueError, OSError) as error:  # includes FileExistsError
        return cli.usage_error(str(error))
    except RuntimeError as error:  # TFLite unavailable or conversion failed
        print(f"{os.path.basename(sys.argv[0])}: export failed: {error}", file=sys.stderr)
        return 1
    print(f"Exported SavedModel to {path}")
    if version is not None:
        print("Serve it with: tensorflow_model_server --rest_api_port=8501 "
              f"--model_name=catdog --model_base_path={os.path.dirname(path)}")
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
