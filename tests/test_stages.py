import json

import pytest

from catdog import config as C
from catdog import models
from catdog import stages


def _base(train_dir, val_dir, model_dir):
    base = C.baseline()
    base.data.train_dir, base.data.val_dir = train_dir, val_dir
    base.data.image_size, base.data.batch_size = (32, 32), 8
    base.model.backbone, base.model.backbone_alpha = "mobilenet", 0.25
    base.model.weights = "imagenet"
    base.train.model_dir, base.train.verbose = str(model_dir), 0
    return base


@pytest.fixture
def no_download(monkeypatch):
    spec = models.BACKBONES["mobilenet"]

    def offline(weights=None, **kwargs):
        if weights == "imagenet":
            raise OSError("URL fetch failure: Name or service not known")
        return spec.constructor(weights=weights, **kwargs)

    monkeypatch.setitem(models.BACKBONES, "mobilenet",
                        models.Backbone(offline, spec.preprocess, spec.top_block_start,
                                        spec.weights_file, spec.has_alpha))


def test_demo_fallback_marks_random_init_stages(tiny_folders, tmp_path, no_download, capsys):
    train_dir, val_dir = tiny_folders
    ones = {s: 1 for s in C.STAGES}
    comp = stages.run_pipeline(_base(train_dir, val_dir, tmp_path), str(tmp_path),
                                 stages=("feature_extraction", "fine_tuning"),
                                 epochs=ones, fallback_to_random_weights=True)
    rows = {r["stage"]: r for r in comp["stages"]}
    assert rows["feature_extraction"]["random_init"] and rows["fine_tuning"]["random_init"]
    assert "RANDOM" in (tmp_path / "comparison.md").read_text()
    assert "RANDOM initialisation" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "feature_extraction" / "metrics.json").read_text())
    assert "ImageNet weights unavailable" in metrics["weights_note"]


def test_without_fallback_missing_weights_stop_the_pipeline(tiny_folders, tmp_path,
                                                            no_download):
    train_dir, val_dir = tiny_folders
    with pytest.raises(models.WeightsError, match="mobilenet_2_5_224_tf_no_top.h5"):
        stages.run_pipeline(_base(train_dir, val_dir, tmp_path), str(tmp_path),
                              stages=("feature_extraction",), epochs={"feature_extraction": 1})


def test_unknown_stage_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="--stages"):
        stages.run_pipeline(C.baseline(), str(tmp_path), stages=("warmup",))


def test_stage_config_takes_presets_and_chains_fine_tuning(tmp_path):
    base = C.baseline()
    fe = stages.stage_config(base, "feature_extraction", str(tmp_path))
    ft = stages.stage_config(base, "fine_tuning", str(tmp_path), epochs={"fine_tuning": 3})
    assert fe.model.augment and fe.train.learning_rate == C.feature_extraction().train.learning_rate
    assert ft.model.init_from == str(tmp_path / "feature_extraction")
    assert ft.train.epochs == 3 and ft.train.learning_rate == 1e-4
    assert base.model.stage == "baseline"  # the base is not modified
