import json
import logging
import os

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


def _fake_stage_runs(monkeypatch, accuracies):
    """train.run replaced by one that records a history with the given val accuracy."""
    from catdog import train  # pylint: disable=import-outside-toplevel

    def fake_run(config, weights_note=""):
        os.makedirs(config.train.model_dir, exist_ok=True)
        acc = accuracies[config.stage]
        with open(os.path.join(config.train.model_dir, "history.csv"), "w") as f:
            f.write(f"epoch,accuracy,val_accuracy,loss,val_loss\n0,0.5,{acc},0.7,0.6\n")
        metrics = {"best_val_accuracy": acc, "best_epoch": 1, "final_val_accuracy": acc,
                   "epochs_completed": 1, "train_examples": 32, "val_examples": 12,
                   "trainable_params": 10, "seconds": 1.0, "model_val_accuracy": acc}
        return train.RunResult(metrics)

    monkeypatch.setattr(train, "run", fake_run)


def test_the_best_stage_is_marked_and_named_for_export(tmp_path, monkeypatch, caplog, capsys):
    _fake_stage_runs(monkeypatch, {"baseline": 0.7, "augmented": 0.8,
                                   "feature_extraction": 0.9, "fine_tuning": 0.85})
    from catdog import figures  # pylint: disable=import-outside-toplevel
    marked = []
    original = figures.comparison
    monkeypatch.setattr(figures, "comparison", lambda histories, path, title="", best="": (
        marked.append(best), original(histories, path, title, best))[1])
    with caplog.at_level(logging.INFO, logger="absl"):
        comp = stages.run_pipeline(_base("t", "v", tmp_path), str(tmp_path))
    assert comp["best_stage"] == "feature_extraction"
    assert marked == ["feature_extraction"]  # comparison.png marks it too
    assert comp["export_model"] == str(tmp_path / "feature_extraction" / "model.keras")
    assert [r["best"] for r in comp["stages"]] == [False, False, True, False]
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["best_stage"] == "feature_extraction"
    table = (tmp_path / "comparison.md").read_text()
    assert "| feature_extraction |" in table
    line = next(l for l in table.splitlines() if l.startswith("| feature_extraction |"))
    assert line.endswith("| **best** |")
    # Stage 4 made it worse: said in the log (a warning), the file and the output.
    note = ("Best stage by validation accuracy: feature_extraction (0.9000); export "
            f"{tmp_path / 'feature_extraction' / 'model.keras'}. The last stage, "
            "fine_tuning, reached only 0.8500: its model is worse.")
    assert note in table and note in capsys.readouterr().out
    assert any(r.levelno == logging.WARNING and note in r.getMessage() for r in caplog.records)


def test_a_tie_goes_to_the_earlier_stage_without_a_warning(tmp_path, monkeypatch, caplog):
    _fake_stage_runs(monkeypatch, {"baseline": 0.7, "augmented": 0.7})
    with caplog.at_level(logging.INFO, logger="absl"):
        comp = stages.run_pipeline(_base("t", "v", tmp_path), str(tmp_path),
                                   stages=("baseline", "augmented"))
    # A tie goes to the earlier, simpler stage, and the later one is not "worse".
    assert comp["best_stage"] == "baseline"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "export " + str(tmp_path / "baseline" / "model.keras") in caplog.text
    assert stages.best_stage([{"stage": "x", "model_val_accuracy": None}]) is None


def test_each_stage_trains_with_its_presets_schedule_unless_one_is_given(tmp_path):
    base = C.baseline()
    schedules = set()
    for stage in C.STAGES:
        preset = C.for_stage(stage).train
        got = stages.stage_config(base, stage, str(tmp_path)).train
        assert {f: getattr(got, f) for f in C.PRESET_SETTINGS} == {
            f: getattr(preset, f) for f in C.PRESET_SETTINGS}, stage
        schedules.add((preset.lr_schedule, preset.warmup_epochs))
    assert len(schedules) > 1  # the presets differ, so stage 1's cannot stand for all
    given = stages.stage_config(base, "feature_extraction", str(tmp_path),
                                settings={"lr_schedule": "step", "warmup_epochs": 0.0},
                                epochs={"feature_extraction": 3})
    assert (given.train.lr_schedule, given.train.warmup_epochs, given.train.epochs) == (
        "step", 0.0, 3)
    with pytest.raises(ValueError, match="dropout"):
        stages.stage_config(base, "baseline", str(tmp_path), settings={"dropout": 0.1})
