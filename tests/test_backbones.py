"""Tests for catdog.backbones: the registry and the routes to ImageNet weights."""

import os

import keras
import numpy as np
import pytest

from catdog import backbones
from catdog import models
from helpers import SHARED

MOBILENET = os.path.join(SHARED, "weights", "mobilenet_2_5_224_tf_no_top.h5")
#: MobileNet widths the tests build (ImageNet files exist for 0.25, not for 0.35).
_ALPHA = {"mobilenet": 0.25, "mobilenet_v2": 0.35}


@pytest.mark.parametrize("name", sorted(backbones.BACKBONES))
def test_every_registered_backbone_builds_and_has_its_top_block(name):
    base = backbones.build_backbone(name, (32, 32), weights="none", alpha=0.35
                                 if backbones.BACKBONES[name].has_alpha else 1.0)
    assert base.name == backbones.BACKBONE_NAME
    assert backbones.BACKBONES[name].top_block_start in [l.name for l in base.layers]


def test_imagenet_download_failure_names_the_file(monkeypatch):
    def fail(**kwargs):
        raise OSError("URL fetch failure: Name or service not known")
    spec = backbones.BACKBONES["vgg16"]
    monkeypatch.setitem(backbones.BACKBONES, "vgg16",
                        backbones.Backbone(fail, spec.preprocess, spec.top_block_start,
                                        spec.weights_file))
    with pytest.raises(backbones.WeightsError) as e:
        backbones.build_backbone("vgg16", (32, 32), "imagenet")
    msg = str(e.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg
    assert "--weights=none" in msg and "~/.keras/models" in msg.replace(os.sep, "/")


def test_weights_file_errors(tmp_path):
    with pytest.raises(backbones.WeightsError, match="not found"):
        backbones.build_backbone("mobilenet", (32, 32), str(tmp_path / "nope.h5"), 0.25)
    if not os.path.exists(MOBILENET):
        pytest.skip("shared MobileNet weights not present")
    with pytest.raises(backbones.WeightsError, match="does not match"):
        backbones.build_backbone("mobilenet", (32, 32), MOBILENET, alpha=0.5)


@pytest.mark.skipif(not os.path.exists(MOBILENET), reason="shared weights absent")
def test_real_pretrained_mobilenet_loads():
    base = backbones.build_backbone("mobilenet", (64, 64), MOBILENET, alpha=0.25)
    ref = keras.applications.MobileNet(alpha=0.25, include_top=False,
                                       weights=MOBILENET, input_shape=(64, 64, 3))
    assert models.count_params(base.weights) == 218_544
    for a, b in zip(base.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(a, b)


def _auto_named(layer):
    # Layers Keras names itself ("rescaling_3") get a process-wide counter.
    import re
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", type(layer).__name__).lower()
    return re.fullmatch(rf"{snake}(_\d+)?", layer.name) is not None


def _network_summary(model):
    """Names, classes, configs and weight shapes of every layer."""
    import re
    rows = []
    for layer in model.layers:
        config = dict(layer.get_config())
        name = layer.name
        if _auto_named(layer):
            name = re.sub(r"_\d+$", "", name)
        config["name"] = name
        rows.append((name, type(layer).__name__, config,
                     [tuple(w.shape) for w in layer.weights]))
    return rows


@pytest.fixture
def keras_download(monkeypatch):
    """Answers keras.applications' weight downloads from a local file (no network).

    Returns a dict: set ``"file"`` to the path to answer with; ``"asked"``
    lists the file names Keras asked for.
    """
    from keras.src.utils import file_utils
    state = {"file": None, "asked": []}

    def get_file(fname=None, origin=None, *args, **kwargs):
        state["asked"].append(fname)
        if state["file"] is None:
            raise OSError(f"URL fetch failure on {origin}: no network in tests")
        return state["file"]

    monkeypatch.setattr(file_utils, "get_file", get_file)
    return state


@pytest.mark.parametrize("name", sorted(backbones.BACKBONES))
def test_weights_file_builds_the_same_network_as_imagenet(name, tmp_path, keras_download):
    alpha = _ALPHA.get(name, 1.0)
    source = backbones.build_backbone(name, (32, 32), "none", alpha)
    path = str(tmp_path / f"{name}.weights.h5")
    source.save_weights(path)
    keras_download["file"] = path
    imagenet = backbones.build_backbone(name, (32, 32), "imagenet", alpha)
    assert keras_download["asked"] == [backbones.BACKBONES[name].weights_file(alpha, (32, 32))]
    from_file = backbones.build_backbone(name, (32, 32), path, alpha)
    assert len(keras_download["asked"]) == 1  # the file route asks Keras for nothing
    assert from_file.name == imagenet.name == backbones.BACKBONE_NAME
    assert _network_summary(from_file) == _network_summary(imagenet)
    for a, b in zip(from_file.get_weights(), imagenet.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.RandomState(0).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(from_file(x).numpy(), imagenet(x).numpy())


@pytest.mark.parametrize("name, size", [
    ("vgg16", (40, 48)), ("vgg19", (32, 32)), ("resnet50", (40, 48)),
    ("mobilenet", (128, 128)), ("mobilenet", (160, 128)), ("mobilenet", (40, 40)),
    ("mobilenet_v2", (96, 96)), ("mobilenet_v2", (96, 128)),
    ("efficientnet_b0", (40, 48))])
def test_offline_message_names_the_file_keras_looks_for(name, size, keras_download):
    alpha = _ALPHA.get(name, 1.0)
    with pytest.raises(backbones.WeightsError) as e:
        backbones.build_backbone(name, size, "imagenet", alpha)
    asked = keras_download["asked"]
    assert len(asked) == 1 and f"Place the file {asked[0]} in" in str(e.value)


def test_weights_file_errors_restore_keras_download(tmp_path, keras_download):
    from keras.src.utils import file_utils
    fake = file_utils.get_file
    vgg = str(tmp_path / "vgg16.weights.h5")
    backbones.build_backbone("vgg16", (32, 32), "none").save_weights(vgg)
    with pytest.raises(backbones.WeightsError, match="does not match backbone 'efficientnet_b0'"):
        backbones.build_backbone("efficientnet_b0", (32, 32), vgg)
    assert file_utils.get_file is fake
    # A width without ImageNet weights (MobileNet takes 0.25-1.0 for
    # ImageNet) still loads a file of the same width.
    own = str(tmp_path / "mobilenet035.weights.h5")
    source = backbones.build_backbone("mobilenet", (32, 32), "none", alpha=0.35)
    source.save_weights(own)
    loaded = backbones.build_backbone("mobilenet", (32, 32), own, alpha=0.35)
    for a, b in zip(loaded.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert file_utils.get_file is fake and keras_download["asked"] == []


def test_mobilenet_fine_tuning_unfreezes_its_last_five_separable_blocks():
    # One depthwise-separable block (two small convolutions) gave fine-tuning
    # too little to adapt: stage 4 then barely moved from stage 3.
    m = models.build_transfer((32, 32), 2, "mobilenet", weights="none", alpha=0.25)
    models.unfreeze_top(m, "mobilenet")
    trainable = {l.name for l in models.find_backbone(m).layers if l.trainable and l.weights}
    assert trainable == {f"conv_{kind}_{block}" for kind in ("dw", "pw")
                         for block in (9, 10, 11, 12, 13)}
