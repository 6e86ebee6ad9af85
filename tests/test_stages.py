import json
import logging
import os
import re

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


def _count_decodes(monkeypatch):
    """Counts, per file content, the images the input pipelines decode."""
    import collections  # pylint: disable=import-outside-toplevel
    import hashlib  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from catdog import decode  # pylint: disable=import-outside-toplevel
    seen = collections.Counter()
    real = decode.decoder

    def spy(*args, **kwargs):
        decode_image = real(*args, **kwargs)

        def note(contents):
            seen[hashlib.sha1(contents.numpy()).hexdigest()] += 1
            return contents

        def counted(contents, image_size):
            contents = tf.py_function(note, [contents], tf.string)
            contents.set_shape([])
            return decode_image(contents, image_size)
        return counted

    monkeypatch.setattr(decode, "decoder", spy)
    return seen


def test_the_job_decodes_each_image_once_for_all_its_stages(tiny_folders, tmp_path,
                                                            monkeypatch):
    train_dir, val_dir = tiny_folders
    seen = _count_decodes(monkeypatch)
    job = tmp_path / "job"
    comp = stages.run_pipeline(_base(train_dir, val_dir, job), str(job),
                               stages=("baseline", "augmented"),
                               epochs={"baseline": 2, "augmented": 2})
    # 32 training and 12 validation images, each decoded once for both stages
    # (a memory cache per stage decodes each of them twice).
    assert len(seen) == 44 and set(seen.values()) == {1}, sorted(seen.values())
    cache = job / "cache"
    names = sorted(p.name for p in cache.iterdir())
    # One cache of each split, shared by the stages: the training split in
    # chunks, validation in one file.
    train_keys = {re.match(r"catdog-train-[0-9a-f]+", n).group(0) for n in names
                  if n.startswith("catdog-train-")
                  and n.endswith(".index")}
    val_index = [n for n in names if n.startswith("catdog-val-") and n.endswith(".index")]
    assert len(train_keys) == 1 and len(val_index) == 1, names
    for stage in ("baseline", "augmented"):
        data = json.loads((job / stage / "config.json").read_text())["data"]
        assert data["cache"] == str(cache) and data["whole_split_shuffle"] is True
    size = sum(p.stat().st_size for p in cache.iterdir())
    assert comp["cache"] == {"dir": str(cache), "bytes": size}
    assert json.loads((job / "comparison.json").read_text())["cache"]["bytes"] == size > 0


def test_an_explicit_memory_cache_decodes_per_stage(tiny_folders, tmp_path, monkeypatch):
    train_dir, val_dir = tiny_folders
    seen = _count_decodes(monkeypatch)
    job = tmp_path / "job"
    comp = stages.run_pipeline(_base(train_dir, val_dir, job), str(job),
                               stages=("baseline", "augmented"),
                               epochs={"baseline": 1, "augmented": 1}, share_cache=False)
    assert len(seen) == 44 and set(seen.values()) == {2}
    assert not (job / "cache").exists() and comp["cache"] is None
    data = json.loads((job / "augmented" / "config.json").read_text())["data"]
    assert data["cache"] == "memory" and data["whole_split_shuffle"] is False
    assert (job / "comparison.json").exists()


@pytest.mark.parametrize("cache", ["none", "DIR"])
def test_a_cache_the_user_chose_is_kept(tmp_path, cache):
    base = C.baseline()
    base.data.cache = str(tmp_path / "mine") if cache == "DIR" else cache
    config = stages.stage_config(base, "augmented", str(tmp_path / "job"),
                                 job_cache=stages.job_cache_dir(base, str(tmp_path / "job")))
    assert config.data.cache == base.data.cache and not config.data.whole_split_shuffle


def test_the_job_cache_sits_in_a_local_model_dir_only(tmp_path):
    base = C.baseline()
    assert stages.job_cache_dir(base, str(tmp_path)) == str(tmp_path / "cache")
    assert stages.job_cache_dir(base, "gs://bucket/job") is None
    base.data.cache = "none"
    assert stages.job_cache_dir(base, str(tmp_path)) is None


@pytest.mark.slow
def test_fast_features_run_on_the_job_cache(tiny_folders, tmp_path, monkeypatch):
    train_dir, val_dir = tiny_folders
    seen = _count_decodes(monkeypatch)
    job = tmp_path / "job"
    base = _base(train_dir, val_dir, job)
    base.model.weights, base.train.fast_features = "none", True
    comp = stages.run_pipeline(base, str(job), stages=("baseline", "feature_extraction"),
                               epochs={"baseline": 1, "feature_extraction": 1})
    assert [r["epochs_completed"] for r in comp["stages"]] == [1, 1]
    assert (job / "feature_extraction" / "fast_features.json").exists()
    # Validation is decoded once for the job; the feature pass reads the
    # training split once more, in file order (its own cache, once a job).
    assert len(seen) == 44 and sorted(seen.values()).count(1) == 12
    assert sorted(seen.values()).count(2) == 32


@pytest.mark.slow
def test_a_job_killed_while_caching_reruns_on_its_cache(tmp_path):
    """A job killed while caching leaves a partial job cache (here a writer
    SIGKILLed while caching the validation split under the very prefix the
    job uses); the rerun clears it, writes it anew and every stage trains."""
    import signal  # pylint: disable=import-outside-toplevel
    from catdog import data  # pylint: disable=import-outside-toplevel
    from helpers import make_class_folder  # pylint: disable=import-outside-toplevel
    from test_file_cache import _start_cache_worker  # pylint: disable=import-outside-toplevel
    train_dir = make_class_folder(tmp_path / "train", per_class=16, seed=1)
    val_dir = make_class_folder(tmp_path / "valid", per_class=20, seed=2)
    job = tmp_path / "job"
    base = _base(train_dir, val_dir, job)
    index = data.index_source(base.data, progress=False)
    proc = _start_cache_worker(dict(
        paths=list(index.val.paths), labels=[int(l) for l in index.val.labels],
        num_classes=2, image_size=list(base.data.image_size), batch_size=4, training=False,
        cache=str(job / "cache"), split="val"))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    left = os.listdir(job / "cache")
    assert any(n.startswith("catdog-val-") and n.endswith(".lockfile") for n in left), left
    comp = stages.run_pipeline(base, str(job), stages=("baseline", "augmented"),
                               epochs={"baseline": 1, "augmented": 1})
    assert [r["epochs_completed"] for r in comp["stages"]] == [1, 1]
    assert [r["val_examples"] for r in comp["stages"]] == [40, 40]
    names = os.listdir(job / "cache")
    assert not any(n.endswith(".lockfile") or "tempstate" in n for n in names), names
    # The killed writer's prefix is the job's: one validation cache, complete.
    assert len([n for n in names if n.startswith("catdog-val-")
                and n.endswith(".index")]) == 1, names


def test_each_stage_trains_with_its_presets_schedule_unless_one_is_given(tmp_path):
    base = C.baseline()
    schedules = set()
    def chosen(config):
        return {f: C.preset_value(config, f) for f in C.PRESET_SETTINGS}

    for stage in C.STAGES:
        preset = C.for_stage(stage)
        assert chosen(stages.stage_config(base, stage, str(tmp_path))) == chosen(preset), stage
        schedules.add((preset.train.lr_schedule, preset.train.warmup_epochs))
    assert len(schedules) > 1  # the presets differ, so stage 1's cannot stand for all
    given = stages.stage_config(base, "feature_extraction", str(tmp_path),
                                settings={"lr_schedule": "step", "warmup_epochs": 0.0},
                                epochs={"feature_extraction": 3})
    assert (given.train.lr_schedule, given.train.warmup_epochs, given.train.epochs) == (
        "step", 0.0, 3)
    with pytest.raises(ValueError, match="batch_size"):
        stages.stage_config(base, "baseline", str(tmp_path), settings={"batch_size": 8})


def test_the_augmented_stage_halves_the_dropout_of_the_others_unless_one_is_given(tmp_path):
    # Stage 1's dropout (0.5) must not stand for stage 2's preset (0.25).
    base = C.baseline()
    dropouts = {stage: stages.stage_config(base, stage, str(tmp_path)).model.dropout
                for stage in C.STAGES}
    assert dropouts == {"baseline": 0.5, "augmented": 0.25,
                        "feature_extraction": 0.5, "fine_tuning": 0.5}
    given = stages.stage_config(base, "augmented", str(tmp_path), settings={"dropout": 0.4})
    assert given.model.dropout == 0.4
