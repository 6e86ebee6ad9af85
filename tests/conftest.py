"""Shared fixtures (the helpers they use live in helpers.py), and global-state hygiene."""

import os

import keras
import pytest

import helpers
from helpers import make_class_folder


@pytest.fixture
def tiny_folders(tmp_path):
    """A train and a validation folder of two classes of tiny JPEGs."""
    train_dir = make_class_folder(tmp_path / "train", per_class=16, seed=1)
    val_dir = make_class_folder(tmp_path / "valid", per_class=6, seed=2)
    return str(train_dir), str(val_dir)


@pytest.fixture(autouse=True)
def _restore_global_state(tmp_path_factory, monkeypatch):
    """No test leaks a dtype policy or the working directory into the next,
    and none writes the file-check cache into the user's home folder."""
    monkeypatch.setenv("CATDOG_CACHE_DIR", str(tmp_path_factory.mktemp("scan-cache")))
    policy = keras.mixed_precision.global_policy().name
    cwd = os.getcwd()
    yield
    keras.mixed_precision.set_global_policy(policy)
    os.chdir(cwd)


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    """A two-class model dir (32x32) and its Keras model, for export/predict."""
    model = helpers.build_model(2)
    model_dir = helpers.write_run(tmp_path_factory.mktemp("binary") / "run", model,
                                  ["cats", "dogs"], (32, 32))
    return model_dir, model


@pytest.fixture(scope="module")
def softmax_run(tmp_path_factory):
    """A three-class model taking any input size, with a non-square config
    (24x40): catches height/width mix-ups."""
    model = helpers.build_model(3, input_size=(None, None))
    model_dir = helpers.write_run(tmp_path_factory.mktemp("softmax") / "run", model,
                                  ["bird", "cat", "dog"], (24, 40))
    return model_dir, model
