import copy
import csv
import json
import logging
import os
import shutil
import time

import numpy as np
import pytest

from catdog import config as C
from catdog import data
from catdog import models
from catdog import train
from helpers import make_class_folder, write_image


def _config(stage, train_dir, val_dir, model_dir, **model):
    c = C.for_stage(stage)
    c.data.train_dir, c.data.val_dir = train_dir, val_dir
    c.data.image_size = (32, 32)
    c.data.batch_size = 8
    c.train.epochs = 2
    c.train.model_dir = str(model_dir)
    c.train.verbose = 0
    for k, v in model.items():
        setattr(c.model, k, v)
    return c


def test_baseline_run_writes_consistent_artifacts(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    bad = os.path.join(train_dir, "dogs", "broken.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 truncated")
    train.run(_config("baseline", train_dir, val_dir, tmp_path / "run"))
    run = tmp_path / "run"
    for name in ("config.json", "history.csv", "model.keras", "metrics.json",
                 "learning_curves.png"):
        assert (run / name).exists(), name
    assert any((run / "logs").rglob("*tfevents*"))
    metrics = json.loads((run / "metrics.json").read_text())
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == metrics["epochs_completed"] == 2
    assert {"accuracy", "precision", "recall", "auc", "val_accuracy", "val_auc",
            "loss", "val_loss"} <= set(rows[0])
    accs = [float(r["val_accuracy"]) for r in rows]
    assert metrics["best_val_accuracy"] == pytest.approx(max(accs))
    assert metrics["best_epoch"] == int(np.argmax(accs)) + 1
    assert metrics["final_val_accuracy"] == pytest.approx(accs[-1])
    assert metrics["train_examples"] == 32 and metrics["val_examples"] == 12
    assert metrics["class_names"] == ["cats", "dogs"]
    assert metrics["skipped_files"] == [{"path": bad, "reason": metrics["skipped_files"][0]["reason"]}]
    assert metrics["skipped_files"][0]["reason"]
    assert metrics["stage"] == "baseline" and metrics["seconds"] > 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["class_names"] == ["cats", "dogs"]
    assert {"tensorflow", "keras", "catdog"} <= set(cfg["versions"])
    assert C.Config.from_dict(cfg).data.image_size == (32, 32)  # rerunnable
    # The saved model is the best epoch's and predicts like the returned one
    # would on the same pixels.
    loaded = models.load_model(str(run))
    assert loaded.output.shape[1:] == (1,)


def test_fine_tuning_starts_from_feature_extraction(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    fe = train.run(_config("feature_extraction", train_dir, val_dir, tmp_path / "fe",
                           backbone="mobilenet", backbone_alpha=0.25, weights="none"))
    assert fe.metrics["trainable_params"] == 256 + 1  # head only
    ft_cfg = _config("fine_tuning", train_dir, val_dir, tmp_path / "ft",
                     init_from=str(tmp_path / "fe"))
    ft_cfg.data.image_size = (48, 48)  # taken from the stage-3 run instead
    ft = train.run(ft_cfg)
    assert ft.metrics["trainable_params"] > fe.metrics["trainable_params"]
    cfg = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert cfg["model"]["backbone"] == "mobilenet"
    assert cfg["data"]["image_size"] == [32, 32]
    # Fine-tuning keeps its own low base rate (its cosine decays from it).
    assert cfg["train"]["learning_rate"] == pytest.approx(1e-4)
    assert cfg["train"]["lr_schedule"] == "cosine"
    # With --val_dir the folders fix the split, so another seed is fine.
    seeded = _config("fine_tuning", train_dir, val_dir, tmp_path / "ft-seed",
                     init_from=str(tmp_path / "fe"))
    seeded.data.seed, seeded.train.epochs = 99, 1
    train.run(seeded)
    assert _split(tmp_path / "ft-seed")["val"] == _split(tmp_path / "fe")["val"]


def test_fine_tuning_rejects_a_non_stage3_init(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    train.run(_config("baseline", train_dir, val_dir, tmp_path / "b"))
    with pytest.raises(ValueError, match="feature_extraction"):
        train.run(_config("fine_tuning", train_dir, val_dir, tmp_path / "ft",
                          init_from=str(tmp_path / "b")))
    with pytest.raises(ValueError, match="--init_from"):
        train.run(_config("fine_tuning", train_dir, val_dir, tmp_path / "ft",
                          init_from=str(tmp_path / "nothing")))


def test_mixed_precision_run_restores_policy(tiny_folders, tmp_path):
    import keras
    train_dir, val_dir = tiny_folders
    c = _config("baseline", train_dir, val_dir, tmp_path / "mp")
    c.train.mixed_precision = "mixed_float16"
    c.train.epochs = 1
    result = train.run(c)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert result.metrics["dtype_policy"] == "mixed_float16"
    assert result.model.get_layer("predictions").compute_dtype == "float32"


def _split(model_dir):
    with open(os.path.join(model_dir, "split.json"), encoding="utf-8") as f:
        return json.load(f)


def _broken(path):
    with open(path, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 truncated")


def test_run_writes_its_split(tmp_path):
    root = make_class_folder(tmp_path / "photos", per_class=10)
    bad = os.path.join(root, "cats", "broken.jpg")
    _broken(bad)
    c = _config("baseline", root, "", tmp_path / "run")
    c.data.validation_split, c.train.epochs = 0.3, 1
    result = train.run(c)
    split = _split(tmp_path / "run")
    index = data.index_source(c.data)
    assert split["train"] == index.train.paths and split["val"] == index.val.paths
    assert split["train_labels"] == index.train.labels
    assert split["val_labels"] == index.val.labels
    assert split["class_names"] == ["cats", "dogs"] and split["source"] == "folder"
    assert bad not in split["train"] + split["val"]
    assert len(split["train"]) == result.metrics["train_examples"] == 14
    assert len(split["val"]) == result.metrics["val_examples"] == 6
    assert not [n for n in os.listdir(tmp_path / "run") if ".tmp" in n]


def test_split_json_keeps_a_file_name_that_is_not_utf8(tmp_path):
    root = make_class_folder(tmp_path / "photos", per_class=6)
    odd = os.path.join(root, "cats", os.fsdecode(b"caf\xe9.jpg"))
    with open(os.path.join(root, "cats", "cats_000.jpg"), "rb") as src, \
            open(os.fsencode(odd), "wb") as dst:
        dst.write(src.read())
    c = _config("baseline", root, "", tmp_path / "run")
    c.data.validation_split, c.train.epochs = 0.25, 1
    train.run(c)
    split = _split(tmp_path / "run")  # valid JSON, read back as UTF-8
    assert odd in split["train"] + split["val"]


@pytest.fixture(scope="module")
def stage3(tmp_path_factory):
    """A finished feature_extraction run that held out --validation_split of
    its folder, plus a validation folder and a copy of the photos."""
    base = tmp_path_factory.mktemp("stage3")
    root = make_class_folder(base / "photos", per_class=12, seed=3)
    shutil.copytree(root, base / "copy")
    val_root = make_class_folder(base / "valid", per_class=4, seed=4)
    c = _config("feature_extraction", root, "", base / "fe", backbone="mobilenet",
                backbone_alpha=0.25, weights="none")
    c.data.validation_split, c.data.seed, c.train.epochs = 0.25, 5, 1
    train.run(c)
    return c, {"val_dir": val_root, "train_dir": str(base / "copy")}


def _fine_tuning_of(fe, model_dir):
    c = C.fine_tuning()
    c.data = copy.deepcopy(fe.data)
    c.model.init_from = fe.train.model_dir
    c.train.model_dir, c.train.epochs, c.train.verbose = str(model_dir), 1, 0
    return c


@pytest.mark.parametrize("field,value", [
    ("seed", 6), ("validation_split", 0.3), ("val_dir", "VAL_DIR"),
    ("train_dir", "TRAIN_DIR"), ("class_names", ("dogs", "cats")), ("max_pixels", 10**6)])
def test_fine_tuning_refuses_a_config_that_changes_the_split(stage3, tmp_path, field, value):
    fe, dirs = stage3
    c = _fine_tuning_of(fe, tmp_path / "ft")
    value = {"VAL_DIR": dirs["val_dir"], "TRAIN_DIR": dirs["train_dir"]}.get(value, value)
    setattr(c.data, field, value)
    with pytest.raises(ValueError, match=f"`--{field}`") as e:
        train.run(c)
    assert fe.train.model_dir in str(e.value)
    assert not os.path.exists(tmp_path / "ft" / "model.keras")


def test_fine_tuning_validates_on_exactly_the_split_of_init_from(tmp_path, caplog):
    root = make_class_folder(tmp_path / "photos", per_class=12, seed=3)
    fe = _config("feature_extraction", root, "", tmp_path / "fe", backbone="mobilenet",
                 backbone_alpha=0.25, weights="none")
    fe.data.validation_split, fe.data.seed, fe.train.epochs = 0.25, 5, 1
    train.run(fe)
    before = _split(tmp_path / "fe")
    # The folder changes after stage 3: new photos, and one training photo breaks.
    for i, name in enumerate(("cats", "dogs")):
        write_image(os.path.join(root, name, f"new_{i}.jpg"),
                    np.full((24, 24, 3), 60 * i, np.uint8))
    broken = before["train"][0]
    _broken(broken)
    with caplog.at_level(logging.INFO, logger="absl"):
        ft = train.run(_fine_tuning_of(fe, tmp_path / "ft"))
    after = _split(tmp_path / "ft")
    assert after["val"] == before["val"] and after["val_labels"] == before["val_labels"]
    assert after["train"] == before["train"][1:]
    assert [s["path"] for s in ft.metrics["skipped_files"]] == [broken]
    assert ft.metrics["val_examples"] == len(before["val"])
    assert "split.json" in caplog.text and fe.train.model_dir in caplog.text


def _artifacts(run):
    names = ("history.csv", "metrics.json", "config.json", "split.json",
             os.path.join("backup", "training_metadata.json"))
    return {n: open(os.path.join(run, n), "rb").read() for n in names}


def test_rerun_with_other_settings_or_data_is_refused_before_training(tmp_path):
    root = make_class_folder(tmp_path / "photos", per_class=10)
    run = str(tmp_path / "run")
    c = _config("baseline", root, "", run)
    c.data.validation_split, c.train.epochs = 0.25, 1
    train.run(c)
    before = _artifacts(run)

    changed = copy.deepcopy(c)
    changed.train.learning_rate, changed.data.batch_size = 0.01, 4
    changed.train.epochs = 3
    with pytest.raises(ValueError) as e:
        train.run(changed)
    msg = str(e.value)
    assert "learning_rate 0.001 -> 0.01" in msg and "batch_size 8 -> 4" in msg
    assert "epochs" not in msg.split("learning_rate")[0]  # more epochs is a resume
    assert "--model_dir" in msg and os.path.join(run, "backup") in msg
    assert "rerunning the earlier command" in msg  # same data: the old run can go on
    assert _artifacts(run) == before

    for i, name in enumerate(("cats", "dogs")):
        write_image(os.path.join(root, name, f"new_{i}.jpg"),
                    np.full((24, 24, 3), 60 * i, np.uint8))
    os.remove(os.path.join(root, "dogs", "dogs_003.jpg"))
    with pytest.raises(ValueError) as e:
        train.run(c)
    msg = str(e.value)
    assert "2 files added, 1 removed" in msg
    assert "--model_dir" in msg and os.path.join(run, "backup") in msg
    # The data moved on: rerunning the earlier command cannot resume it now.
    assert "rerunning the earlier command" not in msg
    assert os.path.join(run, "split.json") in msg
    assert _artifacts(run) == before


def test_resume_refuses_a_setting_recorded_on_one_side_only(tmp_path):
    """Augmentation strengths enter the fingerprint only when set, so a backup
    trained with --shear and a rerun without it (or the other way round) hold
    the key on one side only: that is a change all the same."""
    root = make_class_folder(tmp_path / "photos", per_class=10)
    c = _config("augmented", root, "", tmp_path / "run", shear=0.1)
    c.data.validation_split, c.train.epochs = 0.25, 1
    # A constant rate, so more epochs may resume (a cosine decay spans them).
    c.train.lr_schedule, c.train.warmup_epochs = "constant", 0.0
    train.run(c)
    again = copy.deepcopy(c)
    again.model.shear, again.train.epochs = 0.0, 2
    with pytest.raises(ValueError, match=r"shear 0\.1 -> 0\.0"):
        train.run(again)
    # Settings at their defaults on both sides still resume.
    c.train.epochs = 2
    assert train.run(c).metrics["epochs_completed"] == 2


def test_resume_ignores_what_does_not_shape_training(tmp_path):
    """More epochs, a moved data folder, other output or speed settings, model
    flags the stage does not use (run_pipeline shares one config): the run
    resumes where it stopped."""
    root = make_class_folder(tmp_path / "photos", per_class=10)
    c = _config("baseline", root, "", tmp_path / "run")
    c.data.validation_split, c.train.epochs = 0.25, 1
    train.run(c)
    moved = str(tmp_path / "elsewhere" / "photos")
    shutil.copytree(root, moved)
    again = copy.deepcopy(c)
    again.data.train_dir, again.train.epochs = moved, 2
    again.data.cache, again.data.deterministic = str(tmp_path / "cache"), True
    again.train.jit_compile, again.train.mixed_precision = "false", "float32"
    again.model.backbone, again.model.weights, again.model.head = "mobilenet", "none", "max"
    again.model.fine_tune_layers, again.model.rotation = 3, 0.3  # baseline: no augmentation
    result = train.run(again)
    with open(tmp_path / "run" / "history.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1"]
    assert result.metrics["epochs_completed"] == 2


def test_seconds_is_the_training_time_summed_over_attempts(tmp_path):
    root = make_class_folder(tmp_path / "photos", per_class=10)
    c = _config("baseline", root, "", tmp_path / "run")
    c.data.validation_split, c.train.epochs = 0.25, 1
    first = train.run(c).metrics["seconds"]
    assert first > 0
    # A rerun of the finished job trains nothing and adds nothing.
    assert train.run(c).metrics["seconds"] == first
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["seconds"] == first
    # A resumed run (one more epoch) adds its own time.
    c.train.epochs = 2
    start = time.time()
    second = train.run(c).metrics["seconds"]
    assert first < second <= first + (time.time() - start) + 0.01


def test_training_from_scratch_after_the_backup_is_deleted_replaces_the_model(tmp_path):
    """The way out of a refused resume: delete model_dir/backup and rerun.
    The new training's best model replaces the earlier one even when that
    one was better, so model.keras and metrics.json describe the same run."""
    root = make_class_folder(tmp_path / "photos", per_class=10)
    run = tmp_path / "run"
    c = _config("baseline", root, "", run)
    c.data.validation_split, c.train.epochs = 0.25, 1
    train.run(c)
    state = json.loads((run / "model.best.json").read_text())
    state["best"] = 1.0  # the earlier run was perfect
    (run / "model.best.json").write_text(json.dumps(state))
    shutil.rmtree(run / "backup")
    c.train.learning_rate = 0.01
    result = train.run(c)
    state = json.loads((run / "model.best.json").read_text())
    assert state["best"] == pytest.approx(result.metrics["best_val_accuracy"])
    assert state["best_epoch"] + 1 == result.metrics["best_epoch"]
    saved = models.load_model(str(run))
    for a, b in zip(saved.get_weights(), result.model.get_weights()):
        np.testing.assert_allclose(a, b)


@pytest.mark.slow  # a TensorFlow start-up with two logical CPUs (~30 s)
def test_mirrored_validation_whose_last_batch_leaves_a_replica_empty(tmp_path):
    # 9 validation images in batches of 8 over 2 replicas: the last batch is
    # one image, so one replica validates on zero images, which oneDNN on
    # some CPUs cannot convolve. The run must finish and report the metrics
    # of exactly the 9 images.
    import subprocess
    import sys
    from helpers import REPO, make_class_folder
    from catdog import evaluate
    train_dir = make_class_folder(tmp_path / "train", per_class=8, size=24, seed=1)
    val_dir = make_class_folder(tmp_path / "valid", per_class=5, size=24, seed=2)
    os.remove(os.path.join(val_dir, "dogs", "dogs_004.jpg"))
    model_dir = tmp_path / "m"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    env.pop("TF_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tests", "_stage_worker.py"),
         str(tmp_path / "r.json"), "--logical_cpus", "2", "--",
         f"--train_dir={train_dir}", f"--val_dir={val_dir}", "--image_size=24",
         "--batch_size=8", "--epochs=1", "--verbose=0", f"--model_dir={model_dir}",
         "--strategy=mirrored"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["val_examples"] == 9
    with open(model_dir / "history.csv") as f:
        row = next(csv.DictReader(f))
    # The same model on one device, through catdog's evaluation.
    result = evaluate.evaluate(str(model_dir), val_dir, out_dir=str(tmp_path / "eval"))
    assert result["num_examples"] == 9
    assert float(row["val_accuracy"]) == pytest.approx(result["metrics"]["accuracy"], abs=1e-6)
    p = np.clip([r["probability"] for r in evaluate.read_predictions_csv(
        result["files"]["predictions.csv"])], 1e-7, 1 - 1e-7)
    y = np.array([r["label"] == "dogs" for r in evaluate.read_predictions_csv(
        result["files"]["predictions.csv"])], np.float64)
    loss = float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))
    assert float(row["val_loss"]) == pytest.approx(loss, rel=1e-3, abs=1e-4)


def _every_layer(layer, prefix=""):
    """``(path, layer)`` of the layers inside ``layer``, nested ones included."""
    import keras
    inner = list(getattr(layer, "layers", []))
    if isinstance(layer, keras.layers.Wrapper):
        inner.append(layer.layer)
    for sub in inner:
        path = f"{prefix}/{sub.name}"
        yield path, sub
        yield from _every_layer(sub, path)


def _compute_dtypes(model, containers=True):
    """{layer path: compute dtype} of every layer but the inputs.

    Keras gives a loaded nested model (a container whose layers carry their
    own policies) the global policy of the loading process: leave those
    out of a reloaded model with ``containers=False``.
    """
    import keras
    return {path: layer.compute_dtype for path, layer in _every_layer(model)
            if not isinstance(layer, keras.layers.InputLayer)
            and (containers or not isinstance(layer, keras.Model))}


def _always_float32(path):
    # The float32 head, and the augmentation block's image transforms.
    return path.endswith("predictions") or "random_" in path


@pytest.mark.slow  # two stage-3 and two stage-4 runs (~1 min each under load)
@pytest.mark.parametrize("stage3, stage4", [("mixed_float16", "float32"),
                                            ("float32", "mixed_float16")])
def test_fine_tuning_computes_under_its_own_precision(tiny_folders, tmp_path, stage3, stage4):
    import keras
    train_dir, val_dir = tiny_folders
    fe_cfg = _config("feature_extraction", train_dir, val_dir, tmp_path / "fe",
                     backbone="mobilenet", backbone_alpha=0.25, weights="none")
    fe_cfg.train.mixed_precision, fe_cfg.train.epochs = stage3, 1
    fe = train.run(fe_cfg)
    assert fe.model.get_layer("preprocess").compute_dtype == (
        "float16" if stage3 == "mixed_float16" else "float32")
    ft_cfg = _config("fine_tuning", train_dir, val_dir, tmp_path / "ft",
                     init_from=str(tmp_path / "fe"))
    ft_cfg.train.mixed_precision, ft_cfg.train.epochs = stage4, 1
    ft = train.run(ft_cfg)

    half = "float16" if stage4 == "mixed_float16" else "float32"
    reloaded = models.load_model(str(tmp_path / "ft"))
    for model, containers in ((ft.model, True), (reloaded, False)):
        dtypes = _compute_dtypes(model, containers)
        assert any("conv_pw_13" in p for p in dtypes) and any("random_flip" in p for p in dtypes)
        wrong = {p: d for p, d in dtypes.items()
                 if d != ("float32" if _always_float32(p) else half)}
        assert not wrong, wrong
        assert keras.backend.standardize_dtype(model.output.dtype) == "float32"
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["dtype_policy"] == stage4 == ft.metrics["dtype_policy"]
    scaled = isinstance(ft.model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (stage4 == "mixed_float16")
    # Fine-tuning still starts from the stage-3 weights.
    head = ft.model.get_layer("predictions").kernel.numpy()
    assert head.shape == fe.model.get_layer("predictions").kernel.shape
    assert keras.mixed_precision.global_policy().name == "float32"


# ---------------------------------------------------------------------------
# --mixup / --cutmix: training batches mixed, validation hard
# ---------------------------------------------------------------------------

def _three_classes(tmp_path):
    root = tmp_path / "three"
    if not root.exists():
        make_class_folder(root / "tr", classes=("bird", "cat", "dog"), per_class=8, seed=1)
        make_class_folder(root / "va", classes=("bird", "cat", "dog"), per_class=3, seed=2)
    return str(root / "tr"), str(root / "va")


@pytest.mark.parametrize("num_classes", [2, 3])
def test_mixup_reaches_the_training_batches_only(tiny_folders, tmp_path, num_classes):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    folders = tiny_folders if num_classes == 2 else _three_classes(tmp_path)
    c = _config("baseline", *folders, tmp_path / "run")
    c.train.mixup = 0.4
    index = data.index_source(c.data, progress=False)
    train_ds, val_ds = train._fit_inputs(c, index, tf.distribute.get_strategy())
    width = 1 if num_classes == 2 else 3
    labels = [y.numpy() for _ in range(2) for _, y in train_ds]  # two epochs
    assert all(y.shape == (8, width) and y.dtype == np.float32 for y in labels)
    soft = np.concatenate(labels)
    assert ((soft > 0.01) & (soft < 0.99)).any()  # the loss sees mixed labels
    # Every batch of both epochs is mixed anew (no two alike).
    assert len({tuple(np.round(y.ravel(), 5)) for y in labels}) == len(labels)
    for _, y in val_ds:  # hard: 0/1 (one-hot rows for three classes)
        y = y.numpy()
        assert set(np.unique(y)) <= {0.0, 1.0}
        assert y.shape[1:] == (width,)
        if num_classes > 2:
            assert (y.sum(axis=1) == 1).all()
    c.train.mixup = 0.0
    plain, _ = train._fit_inputs(c, index, tf.distribute.get_strategy())
    assert set(np.unique(np.concatenate([y.numpy() for _, y in plain]))) <= {0.0, 1.0, 2.0}


def test_each_worker_mixes_its_batches_its_own_way(tiny_folders, tmp_path):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    c = _config("baseline", *tiny_folders, tmp_path / "run")
    c.train.cutmix = 1.0
    index = data.index_source(c.data, progress=False)
    batches = data.build_split(c.data, index, "val", training=False)

    def labels(worker):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker,
                                             num_replicas_in_sync=2)
        ds = train._training_batches(batches, c, index.num_classes, context)
        return np.concatenate([y.numpy() for _, y in ds])

    assert not np.allclose(labels(0), labels(1))
    np.testing.assert_array_equal(labels(0), labels(0))  # each worker reproducibly


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("setting", ["mixup", "cutmix"])
def test_a_stage_trains_with_mixed_labels(tiny_folders, tmp_path, num_classes, setting):
    folders = tiny_folders if num_classes == 2 else _three_classes(tmp_path)
    c = _config("augmented", *folders, tmp_path / "run", rand_augment=True)
    c.train.epochs = 1
    setattr(c.train, setting, 0.5)
    result = train.run(c, progress=False)
    final = result.metrics["final"]
    assert 0.0 <= final["accuracy"] <= 1.0 and 0.0 <= final["val_accuracy"] <= 1.0
    assert np.isfinite(final["loss"]) and np.isfinite(final["val_loss"])
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["train"][setting] == 0.5 and record["model"]["rand_augment"] is True
    # The saved model takes images only, does not mix and gives class probabilities.
    model = models.load_model(str(tmp_path / "run"))
    x = np.random.RandomState(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x, verbose=0), model.predict(x, verbose=0))
    assert model.output.shape[1:] == ((1,) if num_classes == 2 else (3,))
    # val_loss is the plain loss of the saved (best, here only) model on hard labels.
    _, val_ds, _ = data.build_datasets(c.data, data.index_source(c.data, progress=False))
    saved = models.compile_model(model, num_classes, 1e-3)
    assert final["val_loss"] == pytest.approx(saved.evaluate(val_ds, verbose=0)[0], rel=1e-4)
    # A rerun without the setting would train differently: refused.
    changed = copy.deepcopy(c)
    setattr(changed.train, setting, 0.0)
    with pytest.raises(ValueError, match=f"{setting} 0.5 -> 0.0"):
        train.run(changed, progress=False)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_label_smoothing_softens_training_labels_only(tiny_folders, tmp_path, num_classes):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    folders = tiny_folders if num_classes == 2 else _three_classes(tmp_path)
    c = _config("baseline", *folders, tmp_path / "run")
    c.train.label_smoothing = 0.2
    index = data.index_source(c.data, progress=False)
    train_ds, val_ds = train._fit_inputs(c, index, tf.distribute.get_strategy())
    got = np.unique(np.concatenate([y.numpy().ravel() for _, y in train_ds]))
    # Keras' smoothing: y * (1 - s) + s / classes (BCE: two classes).
    k = 2 if num_classes == 2 else 3
    np.testing.assert_allclose(got, [0.2 / k, 0.8 + 0.2 / k], rtol=1e-6)
    val = np.unique(np.concatenate([y.numpy().ravel() for _, y in val_ds]))
    np.testing.assert_array_equal(val, [0.0, 1.0])


def test_a_stage_trains_with_label_smoothing(tmp_path):
    c = _config("baseline", *_three_classes(tmp_path), tmp_path / "run")
    c.train.epochs, c.train.label_smoothing = 1, 0.1
    final = train.run(c, progress=False).metrics["final"]
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["train"]["label_smoothing"] == 0.1
    # val_loss is the plain (unsmoothed) loss of the saved model.
    _, val_ds, _ = data.build_datasets(c.data, data.index_source(c.data, progress=False))
    saved = models.compile_model(models.load_model(str(tmp_path / "run")), 3, 1e-3)
    assert final["val_loss"] == pytest.approx(saved.evaluate(val_ds, verbose=0)[0], rel=1e-4)
    changed = copy.deepcopy(c)
    changed.train.label_smoothing = 0.0
    with pytest.raises(ValueError, match="label_smoothing 0.1 -> 0.0"):
        train.run(changed, progress=False)


@pytest.mark.slow  # a TensorFlow start-up with two logical CPUs (~30 s)
def test_mirrored_stage_with_mixing_rand_augment_and_smoothing(tmp_path):
    # Three classes over 2 replicas: one-hot mixed labels split across the
    # replicas, RandAugment's per-replica seeds, the one-hot validation.
    import subprocess
    import sys
    from helpers import REPO
    train_dir, val_dir = _three_classes(tmp_path)
    model_dir = tmp_path / "m"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    env.pop("TF_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tests", "_stage_worker.py"),
         str(tmp_path / "r.json"), "--logical_cpus", "2", "--",
         f"--train_dir={train_dir}", f"--val_dir={val_dir}", "--image_size=24",
         "--batch_size=8", "--epochs=2", "--verbose=0", f"--model_dir={model_dir}",
         "--strategy=mirrored", "--augment", "--rand_augment", "--mixup=0.4",
         "--cutmix=1.0", "--label_smoothing=0.1"],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["epochs_completed"] == 2
    assert all(np.isfinite(metrics["final"][k]) for k in ("loss", "val_loss"))
    record = json.loads((model_dir / "config.json").read_text())
    assert (record["train"]["mixup"], record["train"]["cutmix"]) == (0.4, 1.0)
