"""Figures: learning curves, comparison of stages, augmentation grid, worst
mistakes, confusion matrix, and scripts/show_augmentation.py.

PNG sizes follow from the grid shape (cells of 2 inches at 100 dpi), so
reading a PNG back checks that the grid has the rows and columns asked for.
"""

import csv
import json
import os
import subprocess
import sys

import matplotlib.image as mpimg
import numpy as np
import pytest
from PIL import Image

from helpers import REPO, make_class_folder, write_image
from catdog import figures
from catdog.evaluate import read_predictions_csv

ROWS = [{"epoch": i, "accuracy": 0.5 + i / 10, "val_accuracy": 0.5 + i / 20,
         "loss": 1 - i / 10, "val_loss": 1 - i / 20} for i in range(4)]


def test_learning_curves_png(tmp_path):
    path = figures.learning_curves(ROWS, str(tmp_path / "sub" / "c.png"), title="t")
    img = mpimg.imread(path)
    assert img.shape[0] == 400 and img.shape[1] == 1000  # 10x4 in at 100 dpi
    assert not list((tmp_path / "sub").glob("*.tmp-*"))


def test_comparison_overlays_stages_and_tolerates_empty(tmp_path):
    path = figures.comparison({"baseline": ROWS, "augmented": ROWS[:2], "broken": []},
                            str(tmp_path / "cmp.png"))
    img = mpimg.imread(path)
    assert img.shape[:2] == (450, 1200)


def _size(path):
    with Image.open(path) as im:
        return im.size  # (width, height)


@pytest.fixture
def folder(tmp_path):
    return make_class_folder(tmp_path / "imgs", per_class=5, size=40)


def _pattern(size=32):
    """An asymmetric image: any flip, rotation or zoom changes its pixels."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 0] = (xx * 255 // size).astype(np.uint8)
    img[..., 1] = (yy * 255 // size).astype(np.uint8)
    img[: size // 4, : size // 4, 2] = 255
    return img


# ---------------------------------------------------------------------------
# augment_images / augmentation_grid.
# ---------------------------------------------------------------------------

def test_augment_images_shapes_dtype_and_determinism():
    batch = np.stack([_pattern(), _pattern()[::-1]])
    a = figures.augment_images(batch, 3, seed=7)
    b = figures.augment_images(batch, 3, seed=7)
    assert a.shape == (3, 2, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)  # same seed, same picture
    # Every variant differs from the original (rotation and zoom always act).
    for v in a:
        assert np.abs(v.astype(int) - batch.astype(int)).mean() > 1.0


def test_flip_only_gives_the_image_or_its_mirror():
    image = _pattern()
    variants = figures.augment_images(image[None], 8, flip="horizontal",
                                       rotation=0.0, zoom=0.0, seed=3)
    mirrored = image[:, ::-1]
    kinds = set()
    for v in variants[:, 0]:
        if np.array_equal(v, image):
            kinds.add("same")
        elif np.array_equal(v, mirrored):
            kinds.add("mirror")
        else:
            pytest.fail("a horizontal flip changed more than the orientation")
    assert kinds == {"same", "mirror"}  # 8 draws: both outcomes (p=1-2/256)


def test_augmentation_grid_size_and_picks_across_classes(folder, tmp_path):
    out = tmp_path / "aug.png"
    figures.augmentation_grid(folder, str(out), image_size=(48, 48), n_images=3,
                               n_variants=4, seed=1)
    # 5 columns x 3 rows of 2-inch cells at 100 dpi, plus the title band.
    assert _size(out) == (5 * 200, 3 * 200 + 60)
    picked = figures._pick_images(folder, 4)
    assert {os.path.basename(os.path.dirname(p)) for p in picked} == {"cats", "dogs"}


def test_augmentation_grid_skips_bad_files_and_takes_a_file_list(folder, tmp_path):
    bad = os.path.join(folder, "cats", "zz_broken.jpg")
    with open(bad, "wb") as f:
        f.write(b"not an image")
    good = os.path.join(folder, "dogs", "dogs_000.jpg")
    out = tmp_path / "two.png"
    figures.augmentation_grid([good, bad], str(out), image_size=(32, 32),
                               n_images=4, n_variants=2)
    assert _size(out) == (3 * 200, 1 * 200 + 60)  # one readable row
    with pytest.raises(ValueError, match="could be decoded"):
        figures.augmentation_grid([bad], str(tmp_path / "x.png"), image_size=(32, 32))
    with pytest.raises(ValueError, match="No image files"):
        figures.augmentation_grid(str(tmp_path / "empty_nowhere"), str(tmp_path / "y.png"))
    with pytest.raises(ValueError, match="n_variants"):
        figures.augmentation_grid(folder, str(tmp_path / "z.png"), n_variants=0)


# ---------------------------------------------------------------------------
# worst_mistakes_grid.
# ---------------------------------------------------------------------------

def _predictions_csv(tmp_path, n_mistakes, n_correct=2):
    rows = []
    for i in range(n_mistakes + n_correct):
        path = write_image(str(tmp_path / "p" / f"img{i}.png"),
                           np.full((20, 20, 3), 20 * i, np.uint8))
        rows.append({"path": path, "label": "cats", "probability": f"{0.9 - i / 50:.6f}",
                     "predicted": "dogs" if i < n_mistakes else "cats",
                     "correct": "false" if i < n_mistakes else "true"})
    path = tmp_path / "predictions.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "label", "probability", "predicted", "correct"])
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def test_worst_mistakes_grid_from_csv_rows(tmp_path):
    rows = read_predictions_csv(_predictions_csv(tmp_path, n_mistakes=5))
    out = tmp_path / "worst.png"
    figures.worst_mistakes_grid(rows, str(out), class_names=["cats", "dogs"])
    # 5 mistakes -> 3 columns x 2 rows of 2.3 x 2.6 inch cells.
    assert _size(out) == (690, 570)
    figures.worst_mistakes_grid(rows, str(tmp_path / "two.png"), n=2)
    assert _size(tmp_path / "two.png") == (460, 310)


def test_worst_mistakes_grid_takes_rows_not_a_csv_path(tmp_path):
    csv_path = _predictions_csv(tmp_path, n_mistakes=1)
    with pytest.raises(TypeError, match="read_predictions_csv"):
        figures.worst_mistakes_grid(csv_path, str(tmp_path / "w.png"))
    assert not (tmp_path / "w.png").exists()


def test_worst_mistakes_grid_without_mistakes_or_files(tmp_path):
    rows = read_predictions_csv(_predictions_csv(tmp_path, n_mistakes=0, n_correct=3))
    out = tmp_path / "none.png"
    figures.worst_mistakes_grid(rows, str(out))
    assert _size(out) == (400, 150)  # a note, not a grid
    rows = [{"path": str(tmp_path / "gone.jpg"), "label": "a", "predicted": "b",
             "probability": 0.2, "correct": False},
            {"path": "tfds:x/test#3", "label": "a", "predicted": "b",
             "probability": 0.3, "correct": False,
             "image": np.zeros((8, 8, 3), np.uint8)}]
    figures.worst_mistakes_grid(rows, str(tmp_path / "gone.png"))
    assert os.path.isfile(tmp_path / "gone.png")


def test_mistake_titles_show_the_wrong_answers_probability():
    row = {"predicted": "cats", "probability": 0.1}  # CSV holds P(dogs)
    assert figures._probability_text(row, ["cats", "dogs"]) == "P=0.900"
    assert figures._probability_text(dict(row, predicted="dogs", probability=0.8),
                                      ["cats", "dogs"]) == "P=0.800"
    assert figures._probability_text(row, None) == "probability=0.100"


# ---------------------------------------------------------------------------
# confusion_matrix_image.
# ---------------------------------------------------------------------------

def test_confusion_matrix_image(tmp_path):
    out2 = figures.confusion_matrix_image([[37, 13], [16, 34]], ["cats", "dogs"],
                                           str(tmp_path / "cm2.png"))
    w2, h2 = _size(out2)
    assert (w2, h2) == (530, 430)  # 4.3 + 1 (colour bar) by 4.3 inches
    names = [f"class_{i}" for i in range(8)]
    out8 = figures.confusion_matrix_image(np.eye(8, dtype=int) * 3, names,
                                           str(tmp_path / "cm8.png"))
    w8, h8 = _size(out8)
    assert w8 > w2 and h8 > h2  # grows with the number of classes
    # A class with no example gives an empty row, not a division error.
    figures.confusion_matrix_image([[0, 0], [1, 2]], ["a", "b"], str(tmp_path / "z.png"))
    with pytest.raises(ValueError, match="2x2"):
        figures.confusion_matrix_image(np.zeros((3, 3)), ["a", "b"], str(tmp_path / "e.png"))


# ---------------------------------------------------------------------------
# scripts/show_augmentation.py
# ---------------------------------------------------------------------------

def _script(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "show_augmentation.py"), *args],
        capture_output=True, text=True, timeout=300, env=env)


def test_show_augmentation_script_reads_a_run_config(folder, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({
        "data": {"image_size": [40, 40]},
        "model": {"stage": "baseline", "augment": False, "flip": "vertical",
                  "rotation": 0.05, "zoom": 0.1},
        "class_names": ["cats", "dogs"]}))
    out = tmp_path / "aug.png"
    proc = _script(f"--data_dir={folder}", f"--model_dir={run}", f"--out={out}",
                   "--n_images=2", "--n_variants=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _size(out) == (4 * 200, 2 * 200 + 60)
    assert str(out) in proc.stdout
    assert "baseline model" in proc.stderr and "does not augment" in proc.stderr


@pytest.mark.parametrize("args,needle", [
    (["--rotation=2"], "--rotation"),
    (["--shear=5"], "--shear"),
    (["--fill_mode=mirror"], "--fill_mode"),
    (["--image_size=8"], "--image_size"),
    (["--n_images=0"], "--n_images"),
])
def test_show_augmentation_usage_errors(folder, tmp_path, args, needle):
    proc = _script(f"--data_dir={folder}", f"--out={tmp_path}/a.png", *args)
    assert proc.returncode == 2
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_augment_images_applies_the_other_settings():
    images = np.random.RandomState(0).uniform(100, 150, (3, 24, 24, 3)).astype("float32")
    out = figures.augment_images(images, 2, flip="none", rotation=0.0, zoom=0.0,
                                 brightness=0.2, seed=1).astype(np.float32)
    shift = out - np.round(images)
    # Brightness alone: every pixel of an image moves by the same amount.
    per_image = shift.reshape(2, 3, -1)
    assert np.abs(per_image - per_image[..., :1]).max() <= 1.0
    assert np.abs(per_image[..., 0]).max() > 3.0


def test_show_augmentation_draws_rand_augment_and_checks_its_flags(folder, tmp_path):
    out = tmp_path / "rand.png"
    proc = _script(f"--data_dir={folder}", f"--out={out}", "--n_images=2", "--n_variants=2",
                   "--rand_augment", "--rand_augment_num_ops=3",
                   "--rand_augment_magnitude=0.8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _size(out) == (3 * 200, 2 * 200 + 60)
    bad = _script(f"--data_dir={folder}", f"--out={tmp_path}/b.png", "--rand_augment",
                  "--rand_augment_magnitude=2")
    assert bad.returncode == 2 and "--rand_augment_magnitude" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_augment_images_applies_rand_augment():
    images = np.random.RandomState(0).uniform(0, 255, (2, 24, 24, 3)).astype("float32")
    plain = figures.augment_images(images, 2, rotation=0.0, zoom=0.0, seed=1)
    rand = figures.augment_images(images, 2, rotation=0.0, zoom=0.0, seed=1,
                                  rand_augment=True, rand_augment_num_ops=4)
    # The same flips (same seed), then RandAugment's operations on top.
    np.testing.assert_array_equal(
        plain, figures.augment_images(images, 2, rotation=0.0, zoom=0.0, seed=1))
    assert not np.array_equal(rand, plain)


def test_show_augmentation_adds_a_column_of_the_mixed_batch(folder, tmp_path):
    out = tmp_path / "mixed.png"
    proc = _script(f"--data_dir={folder}", f"--out={out}", "--n_images=3", "--n_variants=2",
                   "--mixup=0.4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _size(out) == (4 * 200, 3 * 200 + 60)  # original, 2 variants, mixed
    bad = _script(f"--data_dir={folder}", f"--out={tmp_path}/b.png", "--cutmix=2")
    assert bad.returncode == 2 and "--cutmix" in bad.stderr


def test_mixed_column_images_and_shares():
    rng = np.random.RandomState(0)
    images = [rng.randint(0, 256, (16, 16, 3)).astype(np.uint8) for _ in range(3)]
    mixed, own = figures.mix_images(images, cutmix=1.0, seed=3)
    assert mixed.shape == (3, 16, 16, 3) and mixed.dtype == np.uint8
    for i in range(3):  # CutMix: the share of its own pixels kept, within a row and column
        kept = (mixed[i] == images[i]).all(axis=-1).mean()
        assert abs(kept - own[i]) <= 33 / 256 or own[i] == 1.0
