"""Shared fixtures: tiny generated image folders, and global-state hygiene."""

import hashlib
import os
import socket

import keras
import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The shared dev photos and weights lie beside the checkout; CATDOG_SHARED
# points elsewhere (as .ci/run honours it too).
SHARED = os.environ.get("CATDOG_SHARED", os.path.join(os.path.dirname(REPO), "shared"))


def write_image(path, pixels, fmt=None):
    """Writes uint8 HxWx3 pixels as JPEG or PNG (by extension unless ``fmt``)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fmt = fmt or ("png" if path.lower().endswith(".png") else "jpeg")
    data = (tf.io.encode_png(pixels) if fmt == "png"
            else tf.io.encode_jpeg(pixels, quality=90))
    tf.io.write_file(path, data)
    return path


def make_class_folder(root, classes=("cats", "dogs"), per_class=12, size=24,
                      seed=0):
    """Writes ``root/<class>/<class>_<i>.jpg`` with a learnable class signal.

    Class i images are brighter in channel i (mod 3), so a model can learn
    them; returns ``root``.
    """
    rng = np.random.RandomState(seed)
    for label, name in enumerate(classes):
        for i in range(per_class):
            pixels = rng.randint(0, 120, size=(size, size, 3)).astype(np.uint8)
            pixels[..., label % 3] += 120
            write_image(os.path.join(root, name, f"{name}_{i:03d}.jpg"), pixels)
    return str(root)


def id_folder(root, ids_per_class, size=16):
    """Class folders of PNGs whose pixels encode a unique id (red + 256 * green).

    Returns ``{id: class index}``. At ``image_size=size`` the resize is the
    identity, so :func:`image_ids` reads the ids back from a batch exactly.
    """
    labels = {}
    for label, (name, ids) in enumerate(zip(("cats", "dogs"), ids_per_class)):
        for i in ids:
            pixels = np.zeros((size, size, 3), np.uint8)
            pixels[..., 0], pixels[..., 1], pixels[..., 2] = i % 256, i // 256, 255 * label
            write_image(os.path.join(root, name, f"{name}_{i:04d}.png"), pixels)
            labels[i] = label
    return labels


def image_ids(images):
    """The ids of a batch of :func:`id_folder` images."""
    pixel = np.asarray(images)[:, 0, 0, :2].astype(np.int64)
    return (pixel[:, 0] + 256 * pixel[:, 1]).tolist()


def tree_state(root):
    """Names, bytes and mtimes of everything under ``root``: equal before and
    after a run means the run left the folder exactly as it was."""
    state = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(folder, name)
            stat = os.lstat(path)
            digest = None
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            state[os.path.relpath(path, root)] = (stat.st_mtime_ns, stat.st_size, digest)
    return state


def free_ports(n):
    """``n`` free TCP ports on 127.0.0.1 (for loopback multi-worker jobs)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


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
    import tinyruns
    model = tinyruns.build_model(2)
    model_dir = tinyruns.write_run(tmp_path_factory.mktemp("binary") / "run", model,
                                   ["cats", "dogs"], (32, 32))
    return model_dir, model


@pytest.fixture(scope="module")
def softmax_run(tmp_path_factory):
    """A three-class model taking any input size, with a non-square config
    (24x40): catches height/width mix-ups."""
    import tinyruns
    model = tinyruns.build_model(3, input_size=(None, None))
    model_dir = tinyruns.write_run(tmp_path_factory.mktemp("softmax") / "run", model,
                                   ["bird", "cat", "dog"], (24, 40))
    return model_dir, model
