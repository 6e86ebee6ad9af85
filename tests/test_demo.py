import hashlib
import os

import numpy as np
import tensorflow as tf

from catdog import demo


def _digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            path = os.path.join(dirpath, f)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_demo_folder_is_deterministic_and_laid_out_by_class(tmp_path):
    a = demo.make_demo_folder(str(tmp_path / "a"), train_per_class=3, val_per_class=2, size=32)
    demo.make_demo_folder(str(tmp_path / "b"), train_per_class=3, val_per_class=2, size=32)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert sorted(os.listdir(a["train_dir"])) == ["cats", "dogs"]
    assert len(os.listdir(os.path.join(a["val_dir"], "dogs"))) == 2
    img = tf.io.decode_jpeg(tf.io.read_file(
        os.path.join(a["train_dir"], "cats", "cat.0000.jpg")))
    assert img.shape == (32, 32, 3)


def test_demo_classes_differ_in_stripe_direction(tmp_path):
    # Cats carry stripes across (rows vary), dogs down (columns vary): the
    # mean absolute vertical vs horizontal gradient tells them apart.
    d = demo.make_demo_folder(str(tmp_path), train_per_class=20, val_per_class=1, size=64)
    def ratio(name):
        vals = []
        for f in sorted(os.listdir(os.path.join(d["train_dir"], name))):
            x = tf.io.decode_jpeg(tf.io.read_file(
                os.path.join(d["train_dir"], name, f))).numpy().astype(float).mean(-1)
            vals.append(np.abs(np.diff(x, axis=0)).mean() / np.abs(np.diff(x, axis=1)).mean())
        return np.median(vals)
    assert ratio("cats") > 1.05 > 0.95 > ratio("dogs")


def test_existing_files_are_left_alone(tmp_path):
    d = demo.make_demo_folder(str(tmp_path), train_per_class=1, val_per_class=1, size=16)
    path = os.path.join(d["train_dir"], "cats", "cat.0000.jpg")
    os.utime(path, (1, 1))
    demo.make_demo_folder(str(tmp_path), train_per_class=1, val_per_class=1, size=16)
    assert os.stat(path).st_mtime == 1
