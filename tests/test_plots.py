import matplotlib.image as mpimg

from catdog import plots

ROWS = [{"epoch": i, "accuracy": 0.5 + i / 10, "val_accuracy": 0.5 + i / 20,
         "loss": 1 - i / 10, "val_loss": 1 - i / 20} for i in range(4)]


def test_learning_curves_png(tmp_path):
    path = plots.learning_curves(ROWS, str(tmp_path / "sub" / "c.png"), title="t")
    img = mpimg.imread(path)
    assert img.shape[0] == 400 and img.shape[1] == 1000  # 10x4 in at 100 dpi
    assert not list((tmp_path / "sub").glob("*.tmp-*"))


def test_comparison_overlays_stages_and_tolerates_empty(tmp_path):
    path = plots.comparison({"baseline": ROWS, "augmented": ROWS[:2], "broken": []},
                            str(tmp_path / "cmp.png"))
    img = mpimg.imread(path)
    assert img.shape[:2] == (450, 1200)
