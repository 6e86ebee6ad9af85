import dataclasses

import pytest

from catdog import config as C
from catdog import options
from catdog import resume_check


def _valid(stage="baseline"):
    c = C.for_stage(stage)
    c.data.train_dir = "x"
    c.train.model_dir = "m"
    if stage == "fine_tuning":
        c.model.init_from = "fe"
    return c


@pytest.mark.parametrize("stage", C.STAGES)
def test_presets_validate_and_roundtrip(stage):
    c = _valid(stage)
    c.validate()
    again = C.Config.from_dict(c.to_dict())
    assert again == c
    assert again.stage == stage


def test_presets_differ_where_the_recipe_says():
    assert C.baseline().model.augment is False
    assert C.augmented().model.augment is True
    assert C.feature_extraction().model.augment is True
    assert C.baseline().train.learning_rate == 1e-3
    assert C.fine_tuning().train.learning_rate == 1e-4


@pytest.mark.parametrize("section,field,value,flag", [
    ("data", "image_size", (8, 8), "image_size"),
    ("data", "image_size", (4000, 64), "image_size"),
    ("data", "batch_size", 0, "batch_size"),
    ("train", "epochs", 0, "epochs"),
    ("data", "validation_split", 1.0, "validation_split"),
    ("data", "validation_split", 0.0, "validation_split"),
    ("train", "learning_rate", -1.0, "learning_rate"),
    ("model", "head", "conv", "head"),
    ("train", "strategy", "horovod", "strategy"),
    ("train", "mixed_precision", "float16", "mixed_precision"),
    ("train", "model_dir", "", "model_dir"),
    ("train", "worker_timeout_seconds", 0.0, "worker_timeout_seconds"),
    ("train", "worker_timeout_seconds", float("nan"), "worker_timeout_seconds"),
    ("train", "data_service_timeout_seconds", 0.0, "data_service_timeout_seconds"),
    ("train", "data_service_timeout_seconds", -5.0, "data_service_timeout_seconds"),
])
def test_out_of_range_values_name_the_flag_and_value(section, field, value, flag):
    c = _valid()
    setattr(getattr(c, section), field, value)
    with pytest.raises(ValueError) as e:
        c.validate()
    assert f"--{flag}" in str(e.value)
    assert repr(value) in str(e.value)


def test_validation_split_not_needed_with_val_dir():
    c = _valid()
    c.data.val_dir = "v"
    c.data.validation_split = 0.0
    c.validate()


def test_fine_tuning_needs_init_from():
    c = _valid("fine_tuning")
    c.model.init_from = ""
    with pytest.raises(ValueError, match="--init_from"):
        c.validate()


def test_unknown_keys_are_rejected():
    d = _valid().to_dict()
    d["data"]["imagesize"] = 3
    with pytest.raises(ValueError, match="imagesize"):
        C.Config.from_dict(d)


@pytest.mark.parametrize("value,expected", [
    ("160", (160, 160)), ("160,128", (160, 128)), ("96x64", (96, 64)),
    ([32], (32, 32)), ((10, 20), (10, 20)), (48, (48, 48))])
def test_parse_image_size(value, expected):
    assert C.parse_image_size(value) == expected


@pytest.mark.parametrize("value", ["abc", "1,2,3", ""])
def test_parse_image_size_errors(value):
    with pytest.raises(ValueError, match="image_size"):
        C.parse_image_size(value)


def test_unknown_stage():
    with pytest.raises(ValueError, match="stage"):
        C.for_stage("finetune")


def _section_classes():
    return [type(getattr(C.Config(), f.name)) for f in dataclasses.fields(C.Config)]


def test_every_field_is_an_option_with_help():
    # A field is declared once, with option(): its help is the flag's --help
    # and the field's doc; a plain field would have neither.
    for section in _section_classes():
        for field in dataclasses.fields(section):
            text = options.option_help(field)
            assert text and len(text) > 10, f"{section.__name__}.{field.name}"


def test_section_docs_list_every_field_with_its_help():
    for section in _section_classes():
        doc = " ".join(section.__doc__.split())
        assert "Attributes:" in doc
        for field in dataclasses.fields(section):
            assert f"{field.name}: {' '.join(options.option_help(field).split())}" in doc


@pytest.mark.parametrize("field,value", [
    ("rotation", 1.5), ("zoom", 1.0), ("zoom", -0.1), ("zoom_width", 1.2),
    ("translation", 1.5), ("translation", -0.1), ("shear", 2.0), ("brightness", 1.1),
    ("contrast", -0.5), ("contrast", float("nan")), ("fill_mode", "mirror"),
    ("fill_value", 300.0), ("flip", "diagonal"),
])
def test_augmentation_values_out_of_range_name_their_flag(field, value):
    c = _valid("augmented")
    setattr(c.model, field, value)
    with pytest.raises(ValueError) as e:
        c.validate()
    assert f"--{field}" in str(e.value) and repr(value) in str(e.value)


def test_a_config_json_from_before_the_new_augmentation_settings_loads_as_before():
    old = {"data": {"train_dir": "x"}, "train": {"model_dir": "m"},
           "model": {"stage": "augmented", "augment": True, "flip": "horizontal",
                     "rotation": 0.1, "zoom": 0.2}}
    c = C.Config.from_dict(old)
    c.validate()
    assert (c.model.zoom_width, c.model.translation, c.model.shear, c.model.brightness,
            c.model.contrast, c.model.fill_mode, c.model.fill_value) == (
                None, 0.0, 0.0, 0.0, 0.0, "reflect", 0.0)
    from catdog import augment  # pylint: disable=import-outside-toplevel
    block = augment.from_model_config(c.model)
    assert [type(l).__name__ for l in block.layers] == ["RandomFlip", "RandomRotation",
                                                        "RandomZoom"]


def test_resume_settings_of_a_default_augmentation_are_those_recorded_before():
    c = _valid("augmented")
    settings = resume_check.resume_settings(c)
    assert {"flip", "rotation", "zoom"} <= set(settings)
    assert not set(settings) & {"zoom_width", "shear", "translation", "brightness",
                                "contrast", "fill_mode", "fill_value"}
    c.model.shear = 0.1
    assert resume_check.resume_settings(c)["shear"] == 0.1  # a changed strength refuses a resume


# ---------------------------------------------------------------------------
# RandAugment (in the model), MixUp and CutMix (in the training pipeline)
# ---------------------------------------------------------------------------

def test_mixing_and_rand_augment_are_off_by_default():
    for stage in C.STAGES:
        c = C.for_stage(stage)
        assert (c.train.mixup, c.train.cutmix) == (0.0, 0.0)
        assert c.model.rand_augment is False
        assert (c.model.rand_augment_magnitude, c.model.rand_augment_num_ops) == (0.5, 2)


@pytest.mark.parametrize("section,field,value", [
    ("train", "mixup", -0.2), ("train", "mixup", float("nan")), ("train", "mixup", True),
    ("train", "cutmix", -1.0), ("train", "cutmix", 1.5),
    ("model", "rand_augment_magnitude", -0.1), ("model", "rand_augment_magnitude", 1.2),
    ("model", "rand_augment_num_ops", 0), ("model", "rand_augment_num_ops", 12),
])
def test_mixing_and_rand_augment_values_out_of_range_name_their_flag(section, field, value):
    c = _valid("augmented")
    setattr(getattr(c, section), field, value)
    with pytest.raises(ValueError) as e:
        c.validate()
    assert f"--{field}" in str(e.value) and repr(value) in str(e.value)


@pytest.mark.parametrize("field", ["mixup", "cutmix"])
def test_mixing_refuses_class_weight_and_fast_features_naming_both_flags(field):
    c = _valid("feature_extraction")
    setattr(c.train, field, 0.2)
    c.validate()  # alone it is fine
    c.train.class_weight = "balanced"
    with pytest.raises(ValueError, match=f"--{field}.*--class_weight"):
        c.validate()
    c.train.class_weight = "none"
    c.train.fast_features = True
    with pytest.raises(ValueError, match=f"--{field}.*--fast_features"):
        c.validate()


def test_mixing_and_rand_augment_are_part_of_the_resume_fingerprint():
    c = _valid("augmented")
    settings = resume_check.resume_settings(c)
    # Always recorded (a backup from before they existed lacks them and
    # still resumes: a missing setting stands for its default), so a rerun
    # that leaves them out is compared too.
    assert (settings["mixup"], settings["cutmix"]) == (0.0, 0.0)
    assert settings["rand_augment"] is False
    c.train.mixup, c.model.rand_augment, c.model.rand_augment_num_ops = 0.2, True, 3
    settings = resume_check.resume_settings(c)
    assert settings["mixup"] == 0.2 and settings["rand_augment"] is True
    assert settings["rand_augment_num_ops"] == 3
    c.model.augment = False  # no block: RandAugment plays no part
    assert "rand_augment" not in resume_check.resume_settings(c)
    assert resume_check.resume_settings(c)["mixup"] == 0.2  # the pipeline mixes whatever the block


def test_label_smoothing_is_checked_and_part_of_the_resume_fingerprint():
    c = _valid("baseline")
    assert c.train.label_smoothing == 0.0
    assert resume_check.resume_settings(c)["label_smoothing"] == 0.0
    for bad in (-0.1, 1.0, float("nan")):
        c.train.label_smoothing = bad
        with pytest.raises(ValueError) as e:
            c.validate()
        assert "--label_smoothing" in str(e.value) and repr(bad) in str(e.value)
    c.train.label_smoothing = 0.1
    c.validate()
    assert resume_check.resume_settings(c)["label_smoothing"] == 0.1
    c.train.class_weight = "balanced"  # the dominant class is still the label's
    c.validate()
    c.train.fast_features = True
    with pytest.raises(ValueError, match="--label_smoothing.*--fast_features"):
        c.validate()


@pytest.mark.parametrize("name,value", [("resize_mode", "squash"), ("interpolation", "cubic"),
                                        ("exif_orientation", "yes")])
def test_decode_settings_are_checked_naming_the_flag(name, value):
    c = _valid("baseline")
    setattr(c.data, name, value)
    with pytest.raises(ValueError, match=f"`--{name}`"):
        c.validate()


@pytest.mark.parametrize("where,flag", [
    ("data/run", "model_dir"), ("data/cats/run", "model_dir"), ("data", "model_dir"),
    ("valid/run", "model_dir"), ("data/dogs/cache", "cache")])
def test_outputs_inside_a_data_folder_are_refused(tmp_path, where, flag):
    """A run writing into a class folder would train on its own files next
    time (or fail on a class folder with no image): refused, nothing written."""
    for folder in ("data/cats", "data/dogs", "valid/cats", "valid/dogs"):
        (tmp_path / folder).mkdir(parents=True)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    c = _valid()
    c.data.train_dir, c.data.val_dir = str(tmp_path / "data"), str(tmp_path / "valid") + "/"
    c.train.model_dir = str(tmp_path / "runs")
    if flag == "cache":
        c.data.cache = str(tmp_path / where)
    else:
        c.train.model_dir = str(tmp_path / where)
    with pytest.raises(ValueError) as e:
        c.validate()
    assert f"--{flag}" in str(e.value) and "inside" in str(e.value)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_outputs_beside_a_data_folder_are_accepted(tmp_path):
    (tmp_path / "data" / "cats").mkdir(parents=True)
    c = _valid()
    c.data.train_dir = str(tmp_path / "data")
    c.train.model_dir = str(tmp_path / "data_runs")  # shares the name's start only
    c.data.cache = str(tmp_path / "cache")
    c.validate()


def test_a_job_model_dir_inside_the_data_folder_is_refused_before_anything_is_written(
        tmp_path):
    from catdog import stages  # pylint: disable=import-outside-toplevel
    (tmp_path / "data" / "cats").mkdir(parents=True)
    base = _valid()
    base.data.train_dir = str(tmp_path / "data")
    with pytest.raises(ValueError, match="--model_dir"):
        stages.run_pipeline(base, str(tmp_path / "data" / "job"))
    assert not (tmp_path / "data" / "job").exists()
