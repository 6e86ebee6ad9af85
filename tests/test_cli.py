import json
import os

from absl import flags
import pytest

from catdog import config as C
from catdog import cli
from catdog import errors


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
    preset = C.fine_tuning().train
    assert (c.train.learning_rate, c.train.epochs) == (preset.learning_rate, preset.epochs)
    assert c.train.learning_rate == 1e-4  # fine-tuning's own low rate
    assert c.stage == "fine_tuning"
    fv(["prog", "--epochs=3", "--learning_rate=0.01"])
    c = cli.config_from_flags("baseline", fv)
    assert c.train.epochs == 3 and c.train.learning_rate == 0.01


def test_dropout_is_the_stage_presets_until_given(fv):
    fv(["prog", "--train_dir=t"])
    assert {stage: cli.config_from_flags(stage, fv).model.dropout for stage in C.STAGES} == {
        stage: C.for_stage(stage).model.dropout for stage in C.STAGES}
    assert cli.config_from_flags("augmented", fv).model.dropout == 0.25
    fv(["prog", "--dropout=0.5"])
    assert cli.config_from_flags("augmented", fv).model.dropout == 0.5


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
    (errors.TrainingPreempted(2, 5), errors.EXIT_PREEMPTED),
    (errors.ModelDirLockedError("held"), errors.EXIT_LOCKED),
    (errors.WorkerLostError("worker-1 is gone"), errors.EXIT_PREEMPTED),
    (RuntimeError("boom"), cli.EXIT_FAILURE),
])
def test_run_main_maps_errors_to_exit_codes(error, code, capsys):
    def fail():
        raise error
    assert cli.run_main(fail) == code
    assert cli.run_main(lambda: None) == cli.EXIT_OK
    if code in (cli.EXIT_USAGE, errors.EXIT_LOCKED) or isinstance(
            error, errors.WorkerLostError):
        assert "Traceback" not in capsys.readouterr().err


def _stage3_dir(tmp_path, **data):
    """A feature_extraction model dir's config.json, as train.run writes it."""
    from catdog import config as config_lib  # pylint: disable=import-outside-toplevel
    c = config_lib.feature_extraction()
    for k, v in data.items():
        setattr(c.data, k, v)
    c.train.model_dir = str(tmp_path / "fe")
    os.makedirs(c.train.model_dir)
    with open(os.path.join(c.train.model_dir, "config.json"), "w") as f:
        json.dump({**c.to_dict(), "class_names": ["dogs", "cats"]}, f)
    return c.train.model_dir


def test_fine_tuning_takes_the_data_flags_it_is_not_given_from_init_from(fv, tmp_path):
    fe = _stage3_dir(tmp_path, train_dir="photos", validation_split=0.3, seed=7,
                     batch_size=4, image_size=(48, 40), class_names=("dogs", "cats"),
                     max_pixels=10**6)
    fv(["prog", f"--init_from={fe}", "--model_dir=ft", "--batch_size=8"])
    c = cli.config_from_flags("fine_tuning", fv)
    d = c.data
    assert (d.train_dir, d.val_dir, d.validation_split, d.seed) == ("photos", "", 0.3, 7)
    assert d.class_names == ("dogs", "cats") and d.max_pixels == 10**6
    assert d.image_size == (48, 40)
    assert d.batch_size == 8  # given on the command line: the flag wins
    # flags.txt records what the run uses, so --flagfile repeats it.
    text = open(cli.write_flagfile(str(tmp_path / "ft"), fv)).read()
    assert "--train_dir=photos" in text and "--seed=7" in text and "--batch_size=8" in text
    # An explicit value stays as given (train.run then refuses a split change).
    fv(["prog", f"--init_from={fe}", "--model_dir=ft", "--seed=9"])
    assert cli.config_from_flags("fine_tuning", fv).data.seed == 9
    # Other stages never read init_from.
    fresh = flags.FlagValues()
    cli.define_training_flags(fresh)
    fresh(["prog", f"--init_from={fe}", "--model_dir=m"])
    assert cli.config_from_flags("baseline", fresh).data.train_dir == ""


def test_worker_timeout_flag(fv):
    fv(["prog", "--train_dir=t", "--model_dir=m"])
    from catdog import config as config_lib
    default = config_lib.TrainConfig().worker_timeout_seconds
    assert 0 < default <= 300  # at most a few minutes
    assert cli.config_from_flags("baseline", fv).train.worker_timeout_seconds == default
    fv(["prog", "--worker_timeout_seconds=30"])
    assert cli.config_from_flags("augmented", fv).train.worker_timeout_seconds == 30


def _other_value(spec):
    """A command-line value of ``spec``'s flag that differs from its default
    and from the baseline preset's value."""
    from catdog import config as config_lib  # pylint: disable=import-outside-toplevel
    preset = getattr(getattr(config_lib.baseline(), spec.section), spec.field)
    if spec.kind == "boolean":
        return "false" if spec.flag_default else "true"
    if spec.kind == "enum":
        return next(c for c in spec.choices if c not in (spec.flag_default, preset))
    if spec.kind == "list":
        return "zebras,ants"
    if spec.kind == "integer":
        return str((spec.flag_default or 0) + 3)
    if spec.kind == "float":
        return str((spec.flag_default or 0.0) + 0.125)
    return "48,40" if spec.flag == "image_size" else f"/some/{spec.flag}"


def test_every_option_has_its_flag_and_every_flag_reaches_its_field(fv):
    import dataclasses  # pylint: disable=import-outside-toplevel
    from catdog import config as config_lib  # pylint: disable=import-outside-toplevel
    from catdog import options  # pylint: disable=import-outside-toplevel
    specs = options.flag_specs(config_lib.Config())
    ours = {name for name in fv if fv.find_module_defining_flag(name, "") == "catdog.cli"}
    assert ours == {s.flag for s in specs}
    # A field without a flag says so (option(flag=False)); a plain field fails here.
    flagged = {(s.section, s.field) for s in specs}
    for section in dataclasses.fields(config_lib.Config):
        for field in dataclasses.fields(getattr(config_lib.Config(), section.name)):
            assert (section.name, field.name) in flagged or options.option_help(field), (
                f"{section.name}.{field.name} has no flag and no option() saying why")
    untouched = cli.config_from_flags("baseline", fv).to_dict()
    for spec in specs:
        fv.unparse_flags()
        fv(["prog", f"--{spec.flag}={_other_value(spec)}"])
        config = cli.config_from_flags("baseline", fv)
        value = getattr(getattr(config, spec.section), spec.field)
        assert value == spec.to_field(fv[spec.flag].value), spec.flag
        changed = {(section, key) for section, fields in config.to_dict().items()
                   for key, v in fields.items() if untouched[section][key] != v}
        assert changed == {(spec.section, spec.field)}, spec.flag


def test_flags_keep_the_kinds_and_defaults_users_see(fv):
    from catdog import config as config_lib  # pylint: disable=import-outside-toplevel
    kinds = {name: fv[name].flag_type() for name in fv}
    assert kinds["image_size"] == "string" and fv["image_size"].default == "160,160"
    assert kinds["class_names"] == "comma separated list of strings"
    assert fv["class_names"].default is None
    assert (kinds["epochs"], kinds["learning_rate"]) == ("int", "float")
    assert fv["epochs"].default is None and fv["learning_rate"].default is None
    for name in ("train_dir", "val_dir", "train_tfrecords", "val_tfrecords", "tfds_name",
                 "tfds_data_dir", "init_from", "model_dir"):
        assert kinds[name] == "string" and fv[name].default is None, name
    assert fv["tpu"].default == ""
    assert kinds["deterministic"] == "bool" and fv["deterministic"].default is False
    assert fv["head"].parser.enum_values == list(config_lib.HEADS)
    assert fv["strategy"].parser.enum_values == list(config_lib.STRATEGIES)
    assert "stage" not in fv  # set by the stage presets
    # Unset --augment keeps the preset's; the strengths are plain values.
    assert kinds["augment"] == "bool" and fv["augment"].default is None
    assert fv["flip"].parser.enum_values == list(config_lib.FLIPS)
    assert fv["fill_mode"].default == "reflect" and fv["zoom_width"].default is None
    assert (fv["rotation"].default, fv["zoom"].default, fv["shear"].default) == (0.1, 0.2, 0.0)


def test_an_option_added_to_a_section_gets_its_flag_and_reaches_the_config():
    import dataclasses  # pylint: disable=import-outside-toplevel
    from catdog import config as config_lib  # pylint: disable=import-outside-toplevel
    from catdog import options  # pylint: disable=import-outside-toplevel

    @dataclasses.dataclass
    class Data(config_lib.DataConfig):
        crop_fraction: float = options.option(0.0, "Fraction of each side cropped away.")
        crop_mode: str = options.option("center", "Where the crop sits.",
                                           choices=("center", "random"))

    @dataclasses.dataclass
    class Train(config_lib.TrainConfig):
        patience: int = options.option(5, "Epochs without progress before stopping.",
                                          flag="early_stop_patience", flag_default=None)

    @dataclasses.dataclass
    class Run(config_lib.Config):
        data: Data = dataclasses.field(default_factory=Data)
        train: Train = dataclasses.field(default_factory=Train)

    values = flags.FlagValues()
    cli.define_training_flags(values, config=Run())
    assert values["crop_fraction"].help == "Fraction of each side cropped away."
    assert values["crop_fraction"].flag_type() == "float"
    assert values["crop_fraction"].default == 0.0
    assert values["crop_mode"].parser.enum_values == ["center", "random"]
    assert values["early_stop_patience"].default is None and "patience" not in values
    values(["prog", "--train_dir=t", "--crop_fraction=0.25", "--crop_mode=random"])
    run = cli.apply_flags(Run(train=Train(patience=9)), values)
    assert (run.data.crop_fraction, run.data.crop_mode) == (0.25, "random")
    assert run.data.train_dir == "t"
    assert run.train.patience == 9  # unset: the preset's value stays
    values(["prog", "--early_stop_patience=2"])
    assert cli.apply_flags(Run(), values).train.patience == 2


def test_augment_flag_overrides_the_preset_only_when_given(fv):
    fv(["prog"])
    assert cli.config_from_flags("baseline", fv).model.augment is False
    assert cli.config_from_flags("augmented", fv).model.augment is True
    fv.unparse_flags()
    fv(["prog", "--augment"])
    assert cli.config_from_flags("baseline", fv).model.augment is True
    fv.unparse_flags()
    fv(["prog", "--noaugment"])
    assert cli.config_from_flags("feature_extraction", fv).model.augment is False


def test_augmentation_flags_reach_the_model_config(fv):
    fv(["prog", "--flip=horizontal_and_vertical", "--rotation=0.0972", "--zoom=0.2",
        "--zoom_width=0.3", "--translation=0.1", "--shear=0.15", "--brightness=0.2",
        "--contrast=0.25", "--fill_mode=nearest", "--fill_value=12"])
    m = cli.config_from_flags("augmented", fv).model
    assert (m.flip, m.rotation, m.zoom, m.zoom_width, m.translation, m.shear, m.brightness,
            m.contrast, m.fill_mode, m.fill_value) == (
                "horizontal_and_vertical", 0.0972, 0.2, 0.3, 0.1, 0.15, 0.2, 0.25,
                "nearest", 12.0)


def test_run_pipeline_augment_applies_to_the_stages_that_build_their_model(tmp_path):
    from catdog import config as config_lib  # pylint: disable=import-outside-toplevel
    from catdog import stages  # pylint: disable=import-outside-toplevel
    base = config_lib.baseline()
    presets = {s: stages.stage_config(base, s, str(tmp_path)).model.augment
               for s in ("baseline", "augmented")}
    assert presets == {"baseline": False, "augmented": True}
    on = stages.stage_config(base, "baseline", str(tmp_path), augment=True)
    off = stages.stage_config(base, "feature_extraction", str(tmp_path), augment=False)
    assert on.model.augment is True and off.model.augment is False


def test_fine_tuning_decodes_as_its_init_from_run(fv, tmp_path):
    fe = _stage3_dir(tmp_path, train_dir="photos", resize_mode="crop", interpolation="area",
                     exif_orientation=False)
    fv(["prog", f"--init_from={fe}", "--model_dir=ft"])
    d = cli.config_from_flags("fine_tuning", fv).data
    assert (d.exif_orientation, d.resize_mode, d.interpolation) == (False, "crop", "area")
    # A stage-3 run of an older catdog (no decode settings recorded) made its
    # pixels without EXIF orientation: fine-tuning goes on with those.
    path = os.path.join(fe, "config.json")
    record = json.load(open(path))
    for key in ("exif_orientation", "resize_mode", "interpolation"):
        del record["data"][key]
    json.dump(record, open(path, "w"))
    fresh = flags.FlagValues()
    cli.define_training_flags(fresh)
    fresh(["prog", f"--init_from={fe}", "--model_dir=ft"])
    d = cli.config_from_flags("fine_tuning", fresh).data
    assert (d.exif_orientation, d.resize_mode, d.interpolation) == (False, "stretch", "bilinear")


def test_a_stage_script_keeps_its_presets_schedule_unless_the_flag_is_given(fv):
    from catdog import config as config_lib  # pylint: disable=import-outside-toplevel
    preset = config_lib.for_stage("feature_extraction").train
    fv(["prog"])
    train = cli.config_from_flags("feature_extraction", fv).train
    assert (train.lr_schedule, train.warmup_epochs) == (preset.lr_schedule, preset.warmup_epochs)
    fv.unparse_flags()
    fv(["prog", "--lr_schedule=step", "--warmup_epochs=0"])
    train = cli.config_from_flags("feature_extraction", fv).train
    assert (train.lr_schedule, train.warmup_epochs) == ("step", 0.0)
