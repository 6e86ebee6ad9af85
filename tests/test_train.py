import csv
import json
import os

import numpy as np
import pytest

from catdog import config as C
from catdog import models
from catdog import train


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
    assert ft.model.optimizer.learning_rate.numpy() == pytest.approx(1e-4)


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


@pytest.mark.slow  # a TensorFlow start-up with two logical CPUs (~30 s)
def test_mirrored_validation_whose_last_batch_leaves_a_replica_empty(tmp_path):
    # 9 validation images in batches of 8 over 2 replicas: the last batch is
    # one image, so one replica validates on zero images, which oneDNN on
    # some CPUs cannot convolve. The run must finish and report the metrics
    # of exactly the 9 images.
    import subprocess
    import sys
    from conftest import REPO, make_class_folder
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
