"""The learning-rate range test (catdog.lr_finder, scripts/find_lr.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from catdog import config as C
from catdog import lr_finder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    rates = np.logspace(-6, 0, 61)
    x = np.log10(rates)
    # Falls fastest at 1e-3, lowest at 1e-2, then diverges.
    loss = 1.0 - 0.5 * np.tanh(3 * (x + 3)) + np.where(x > -2, 10 * (x + 2) ** 2, 0)
    found = lr_finder.suggest(rates, loss)
    assert found["steepest"] == pytest.approx(1e-3, rel=0.1)
    lowest = rates[int(np.argmin(loss))]
    assert found["min_loss_over_10"] == pytest.approx(lowest / 10)
    with pytest.raises(ValueError, match="--lr_find_steps"):
        lr_finder.suggest(rates[:2], loss[:2])


def test_a_one_step_dip_next_to_the_minimum_is_not_the_suggestion():
    # As on the real photos (stage 3): flat, then a steady fall over two
    # decades from 1e-3, one noisy drop a step before the minimum at 0.15,
    # then divergence. The steepest single step is that drop; the steepest
    # descent over a decade is inside the steady fall.
    rates = np.logspace(-7, 0, 100)
    x = np.log10(rates)
    loss = np.where(x < -3, 0.69, 0.69 - 0.06 * (x + 3))
    lowest = int(np.argmin(np.abs(rates - 0.15)))
    loss[lowest - 1] -= 0.01
    loss[lowest] -= 0.03
    loss[lowest + 1:] = loss[lowest] + 2.0 * (x[lowest + 1:] - x[lowest])
    found = lr_finder.suggest(rates, loss)
    assert 1e-3 <= found["steepest"] <= 0.05, found
    assert found["min_loss_over_10"] == pytest.approx(rates[lowest] / 10)


def test_range_test_writes_the_curve_and_a_suggestion(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    c = C.for_stage("baseline")
    c.data.train_dir, c.data.val_dir = train_dir, val_dir
    c.data.image_size, c.data.batch_size = (32, 32), 8
    c.train.model_dir = str(tmp_path / "lr")
    result = lr_finder.find_lr(c, min_lr=1e-5, max_lr=10.0, steps=30, progress=False)
    saved = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert saved["suggested_learning_rate"] == result["suggested_learning_rate"]
    assert (tmp_path / "lr" / "lr_find.png").stat().st_size > 1000
    rates = np.array(saved["rates"])
    # Exponential: the same factor every step, from --lr_find_min.
    assert rates[0] == pytest.approx(1e-5)
    np.testing.assert_allclose(rates[1:] / rates[:-1], (10.0 / 1e-5) ** (1 / 29), rtol=1e-4)
    assert 2 < saved["steps"] <= 30 and len(saved["losses"]) == saved["steps"]
    assert rates.min() <= result["suggested_learning_rate"] <= rates.max()
    # Nothing else of a training run is written.
    assert sorted(os.listdir(tmp_path / "lr")) == ["lr_find.json", "lr_find.png"]


def test_script_refuses_bad_bounds_with_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "find_lr.py"),
         "--train_dir=x", f"--model_dir={tmp_path}", "--lr_find_min=1", "--lr_find_max=0.1"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--lr_find_min" in proc.stderr


@pytest.mark.parametrize("strategy", ["multi_worker", "tpu"])
def test_script_refuses_a_strategy_across_processes_with_exit_2(tiny_folders, tmp_path,
                                                                strategy):
    """The range test runs in one process (one device or mirrored over the
    local ones); a cluster strategy is refused before anything is trained."""
    train_dir, val_dir = tiny_folders
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "find_lr.py"),
         f"--train_dir={train_dir}", f"--val_dir={val_dir}", "--image_size=24",
         "--batch_size=8", f"--model_dir={tmp_path / 'lr'}", "--lr_find_steps=5",
         f"--strategy={strategy}"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"--strategy={strategy}" in proc.stderr and "mirrored" in proc.stderr
    assert not (tmp_path / "lr" / "lr_find.json").exists()


@pytest.mark.slow  # a stage-3 run, then the test on its model (~25 s)
def test_range_test_of_fine_tuning_starts_from_the_stage3_model(tiny_folders, tmp_path):
    from catdog import train  # pylint: disable=import-outside-toplevel
    train_dir, val_dir = tiny_folders
    fe = C.for_stage("feature_extraction")
    fe.data.train_dir, fe.data.val_dir = train_dir, val_dir
    fe.data.image_size, fe.data.batch_size = (32, 32), 8
    fe.model.backbone, fe.model.backbone_alpha, fe.model.weights = "mobilenet", 0.25, "none"
    fe.train.epochs, fe.train.verbose, fe.train.model_dir = 1, 0, str(tmp_path / "fe")
    train.run(fe)
    ft = C.for_stage("fine_tuning")
    ft.data = fe.data
    ft.model.init_from, ft.train.model_dir = str(tmp_path / "fe"), str(tmp_path / "lr")
    ft.train.optimizer = "sgd"
    result = lr_finder.find_lr(ft, min_lr=1e-6, max_lr=1.0, steps=8, progress=False)
    assert result["stage"] == "fine_tuning" and result["optimizer"] == "sgd"
    assert len(result["rates"]) == result["steps"] >= 3
