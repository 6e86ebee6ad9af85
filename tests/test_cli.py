from absl import flags
import pytest

from catdog import cli
from catdog import resilience


@pytest.fixture
def fv():
    values = flags.FlagValues()
    cli.define_training_flags(values)
    cli.define_training_flags(values)  # idempotent
    return values


def test_flags_override_the_stage_preset(fv):
    fv(["prog", "--train_dir=t", "--image_size=96,64", "--class_names=dogs,cats",
        "--model_dir=m", "--mixed_precision=float32"])
    c = cli.config_from_flags("fine_tuning", fv)
    assert c.data.image_size == (96, 64) and c.data.class_names == ("dogs", "cats")
    assert c.train.learning_rate == 1e-4 and c.train.epochs == 20  # preset
    assert c.stage == "fine_tuning"
    fv(["prog", "--epochs=3", "--learning_rate=0.01"])
    c = cli.config_from_flags("baseline", fv)
    assert c.train.epochs == 3 and c.train.learning_rate == 0.01


def test_every_flag_has_help(fv):
    for name in fv:
        if fv.find_module_defining_flag(name, "").startswith("catdog"):
            assert fv[name].help and len(fv[name].help) > 10, name


def test_flagfile_holds_only_catdog_flags(fv, tmp_path):
    fv(["prog", "--train_dir=t", "--model_dir=m", "--epochs=4"])
    path = cli.write_flagfile(str(tmp_path), fv)
    text = open(path).read()
    assert "--train_dir=t" in text and "--epochs=4" in text
    again = flags.FlagValues()
    cli.define_training_flags(again)
    again(["prog", f"--flagfile={path}"])
    assert again.epochs == 4 and again.train_dir == "t"


@pytest.mark.parametrize("error,code", [
    (ValueError("bad --x"), cli.EXIT_USAGE),
    (FileNotFoundError("nope"), cli.EXIT_USAGE),
    (resilience.TrainingPreempted(2, 5), resilience.EXIT_PREEMPTED),
    (resilience.ModelDirLockedError("held"), resilience.EXIT_LOCKED),
    (resilience.WorkerLostError("worker-1 is gone"), resilience.EXIT_PREEMPTED),
    (RuntimeError("boom"), cli.EXIT_FAILURE),
])
def test_run_main_maps_errors_to_exit_codes(error, code, capsys):
    def fail():
        raise error
    assert cli.run_main(fail) == code
    assert cli.run_main(lambda: None) == cli.EXIT_OK
    if code in (cli.EXIT_USAGE, resilience.EXIT_LOCKED) or isinstance(
            error, resilience.WorkerLostError):
        assert "Traceback" not in capsys.readouterr().err


def test_worker_timeout_flag(fv):
    fv(["prog", "--train_dir=t", "--model_dir=m"])
    from catdog import config as config_lib
    default = config_lib.TrainConfig().worker_timeout_seconds
    assert 0 < default <= 300  # at most a few minutes
    assert cli.config_from_flags("baseline", fv).train.worker_timeout_seconds == default
    fv(["prog", "--worker_timeout_seconds=30"])
    assert cli.config_from_flags("augmented", fv).train.worker_timeout_seconds == 30
