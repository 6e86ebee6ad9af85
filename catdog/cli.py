"""Command-line glue shared by the scripts: one set of training flags.

Nothing here runs at import: :func:`define_training_flags` defines the flags
(once per process) and :func:`config_from_flags` turns parsed values into a
:class:`catdog.config.Config`. The library itself never reads flags.
"""

from __future__ import annotations

import os
import sys
import traceback

from absl import flags
from absl import logging

from catdog import config as config_lib
from catdog import decode
from catdog import errors
from catdog import options
from catdog import rundir
# Exit codes a scheduler can act on (documented in README.md and catdog.errors).
from catdog.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE  # noqa: F401


_DEFINE = {
    "string": flags.DEFINE_string,
    "integer": flags.DEFINE_integer,
    "float": flags.DEFINE_float,
    "boolean": flags.DEFINE_boolean,
    "list": flags.DEFINE_list,
}


def define_training_flags(flag_values=flags.FLAGS, config=None) -> None:
    """Defines the flags every training script shares (idempotent).

    One flag per setting of :class:`catdog.config.Config` that has one (see
    :func:`catdog.options.option`), with the setting's help, type and default.

    Args:
      flag_values: the ``FlagValues`` to define them in.
      config: a Config (or a subclass instance with more options) whose
        options become flags; default ``Config()``.
    """
    specs = options.flag_specs(config_lib.Config() if config is None else config)
    if specs[0].flag in flag_values:
        return
    for spec in specs:
        if spec.kind == "enum":
            flags.DEFINE_enum(spec.flag, spec.flag_default, list(spec.choices), spec.help,
                              flag_values=flag_values)
        else:
            _DEFINE[spec.kind](spec.flag, spec.flag_default, spec.help,
                               flag_values=flag_values)


def config_from_flags(stage: str, flag_values=flags.FLAGS) -> config_lib.Config:
    """Builds the Config of ``stage`` from parsed flags (preset + overrides).

    For ``fine_tuning`` with ``--init_from``, every data flag not given on
    the command line first takes the value of that run (see
    :func:`inherit_data_flags`).
    """
    if stage == "fine_tuning" and flag_values.init_from:
        inherit_data_flags(flag_values.init_from, flag_values)
    return apply_flags(config_lib.for_stage(stage), flag_values)


def apply_flags(config: config_lib.Config, flag_values=flags.FLAGS) -> config_lib.Config:
    """Sets every setting of ``config`` that has a flag to the flag's value.

    A flag that is unset (``None``: not given and without a default, e.g.
    ``--epochs`` or ``--train_dir``) leaves ``config``'s value, the stage
    preset's.

    Returns:
      ``config``, changed in place.
    """
    for spec in options.flag_specs(config):
        value = flag_values[spec.flag].value
        if value is not None:
            setattr(getattr(config, spec.section), spec.field, spec.to_field(value))
    return config


def inherit_data_flags(init_dir: str, flag_values=flags.FLAGS) -> list:
    """Sets the data flags not given on the command line to those of ``init_dir``'s run.

    Fine-tuning validates on exactly the split of the run it starts from, so
    a user need not repeat that run's data flags; flags given explicitly keep
    their value (and ``train.run`` refuses one that would change the split).
    The flag values themselves change, so ``flags.txt`` records what the run
    uses. A missing or unreadable ``config.json`` changes nothing (the
    training run then says what ``--init_from`` must be).

    Returns:
      The names of the flags whose value was taken over.
    """
    try:
        data = rundir.read_config(init_dir).get("data") or {}
    except (OSError, ValueError, AttributeError):
        return []
    # A config.json from before a decode setting existed made its pixels the
    # old way: fine-tuning goes on with those.
    data = {**decode.LEGACY_OPTIONS.record(), **data}
    taken = []
    for spec in options.flag_specs(config_lib.Config()):
        name = spec.flag
        if (spec.section != "data" or name not in flag_values
                or flag_values[name].present or spec.field not in data):
            continue
        value = spec.to_flag(data[spec.field])
        if value == "" and flag_values[name].default is None:
            value = None
        if value == flag_values[name].value:
            continue
        setattr(flag_values, name, value)
        taken.append(name)
    if taken:
        logging.info("Data flags taken from --init_from %s: %s", init_dir,
                     " ".join(flag_values[n].serialize() or f"--{n}" for n in taken))
    return taken


def flagfile_text(flag_values=flags.FLAGS, omit=()) -> str:
    """The run's flags as ``--flagfile`` text: catdog's and the script's own.

    ``omit``: flags left out, so that a rerun from the file leaves them
    unset as this run did (where a script tells a given flag from its default).
    """
    # Only catdog's own flags and the script's: flags other libraries define
    # at import time are not known to a fresh process reading the file.
    ours = []
    for module, module_flags in flag_values.flags_by_module_dict().items():
        if (module.startswith("catdog") or module == "__main__"
                or os.path.abspath(module) == os.path.abspath(sys.argv[0])):
            ours.extend(module_flags)
    lines = sorted({flag.serialize() for flag in ours
                    if flag.value is not None
                    and flag.name not in ("flagfile", "undefok", *omit)})
    return "\n".join(line for line in lines if line) + "\n"


def write_flagfile(model_dir: str, flag_values=flags.FLAGS, omit=()) -> str:
    """Writes the run's flags so ``--flagfile=model_dir/flags.txt`` repeats it.

    ``omit``: flags left out (see :func:`flagfile_text`).
    """
    path = os.path.join(model_dir, rundir.FLAGS_FILE)
    os.makedirs(model_dir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(flagfile_text(flag_values, omit))
    return path


def run_main(fn, *args, **kwargs) -> int:
    """Runs ``fn`` and maps failures to exit codes with a one-line message.

    ValueError / FileNotFoundError (bad flags or data: nothing was trained)
    exit with :data:`EXIT_USAGE` and no traceback; preemption (SIGTERM) and
    a lost worker of a multi-worker job with ``EXIT_PREEMPTED`` (75: rerun to
    resume); a model_dir held by a live run
    with ``EXIT_LOCKED`` (73); anything else with :data:`EXIT_FAILURE` and
    its traceback in the log.
    """
    try:
        fn(*args, **kwargs)
    except KeyboardInterrupt as e:
        print("interrupted", file=sys.stderr)
        return errors.exit_code_for(e)
    except Exception as e:  # pylint: disable=broad-except
        code = errors.exit_code_for(e)
        if isinstance(e, errors.TrainingPreempted):
            print(f"preempted: {e}. Rerun the same command to resume.", file=sys.stderr)
        elif code == EXIT_FAILURE:  # the job failed; say what and where
            traceback.print_exc()
            logging.error("failed: %s", e)
        else:
            print(f"error: {e}", file=sys.stderr)
        return code
    return EXIT_OK


def train_stage(stage: str, flag_values=flags.FLAGS) -> None:
    """The body of a stage script: flags -> config -> :func:`catdog.train.run`."""
    from catdog import train  # heavy import only when training
    config = config_from_flags(stage, flag_values)
    config.validate()
    # flags.txt is written by the run once accepted: a refused rerun leaves
    # the flags of the run the model_dir holds.
    train.run(config, extra_files={rundir.FLAGS_FILE: flagfile_text(flag_values)})


def refuse_positional(argv):
    """Usage-error exit code when a script got positional arguments, else None."""
    if len(argv) > 1:
        return usage_error(f"unexpected arguments {argv[1:]}; all settings are "
                           "--flags.")
    return None


def script_main(fn, *args):
    """Returns an absl ``main`` that refuses positional arguments and runs
    ``fn(*args)`` through :func:`run_main` (exit codes included)."""
    def main(argv):
        refused = refuse_positional(argv)
        return refused if refused is not None else run_main(fn, *args)
    return main


def stage_script_main(stage: str):
    """Returns an absl ``main`` that trains ``stage`` and exits with a code."""
    return script_main(train_stage, stage)


def escape_undecodable_names() -> None:
    """Prints file names that are not valid UTF-8 with their odd bytes
    escaped (``\\udcff``) instead of failing on them."""
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(errors="backslashreplace")


def usage_error(message: str) -> int:
    """Prints a one-line usage error (no traceback); returns :data:`EXIT_USAGE`."""
    print(f"{os.path.basename(sys.argv[0])}: error: {message}\n"
          "Run with --help for the flags.", file=sys.stderr)
    return EXIT_USAGE


def parse_flags(argv, flag_values=flags.FLAGS):
    """absl's flag parser, but an unknown or malformed flag exits with 2."""
    try:
        return flag_values(argv)
    except flags.Error as e:
        sys.exit(usage_error(str(e)))
