"""ImageNet backbones: the registry, and how their weights are obtained.

A backbone is a headless ``keras.applications`` network. Its weights come
from Keras' own download and cache (``weights="imagenet"``), from a file
the user names (built through the same ``imagenet`` route, so networks such
as EfficientNet get the same input normalisation), or nowhere (``"none"``,
random initialisation). :mod:`catdog.models` puts a backbone into a
transfer model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Callable
import warnings

from absl import logging
import keras

#: Name of the backbone model (and of its wrapper layer in a transfer model).
BACKBONE_NAME = "backbone"
#: Where Keras caches the weights it downloads.
KERAS_CACHE = os.path.join("~", ".keras", "models")


class WeightsError(ValueError):
    """Backbone weights cannot be obtained or do not fit the backbone."""


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A registered ImageNet backbone.

    Attributes:
      constructor: the ``keras.applications`` function.
      preprocess: :class:`Preprocess` mode of its ``preprocess_input``.
      top_block_start: name of the first layer of the top block, which
        fine-tuning unfreezes by default (everything from it to the output).
      weights_file: ``f(alpha, image_size)`` giving the no-top weights file
        name Keras downloads into ``~/.keras/models``.
      has_alpha: takes a width multiplier (``--backbone_alpha``).
    """

    constructor: Callable
    preprocess: str
    top_block_start: str
    weights_file: Callable
    has_alpha: bool = False


def _square_rows(size, allowed):
    # As keras.applications: square sizes it has weights for, else 224.
    return size[0] if size[0] == size[1] and size[0] in allowed else 224


def _mobilenet_file(alpha, size):
    alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}.get(alpha, str(alpha))
    rows = _square_rows(size, (128, 160, 192, 224))
    return f"mobilenet_{alpha_text}_{rows}_tf_no_top.h5"


def _mobilenet_v2_file(alpha, size):
    rows = _square_rows(size, (96, 128, 160, 192, 224))
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"


BACKBONES = {
    # VGG16: block5 is its last 4 layers (3 convs and the pool).
    "vgg16": Backbone(keras.applications.VGG16, "caffe", "block5_conv1",
                      lambda a, s: "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    # VGG19: block5 is its last 5 layers (4 convs and the pool).
    "vgg19": Backbone(keras.applications.VGG19, "caffe", "block5_conv1",
                      lambda a, s: "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    # ResNet50: the last residual block conv5_block3 (10 layers).
    "resnet50": Backbone(keras.applications.ResNet50, "caffe", "conv5_block3_1_conv",
                         lambda a, s: "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    # MobileNet v1: the last five depthwise-separable blocks 9-13 (31 layers,
    # 10 convolutions); one block of two small convolutions adapts too little.
    "mobilenet": Backbone(keras.applications.MobileNet, "tf", "conv_dw_9",
                          _mobilenet_file, has_alpha=True),
    # MobileNetV2: the last inverted-residual block 16 and the 1x1 top conv (12 layers).
    "mobilenet_v2": Backbone(keras.applications.MobileNetV2, "tf", "block_16_expand",
                             _mobilenet_v2_file, has_alpha=True),
    # EfficientNetB0: block7a and the top conv (20 layers).
    "efficientnet_b0": Backbone(keras.applications.EfficientNetB0, "none",
                                "block7a_expand_conv",
                                lambda a, s: "efficientnetb0_notop.h5"),
}


def get_backbone(name: str) -> Backbone:
    """Returns the registered backbone ``name``; ValueError lists the choices."""
    if name not in BACKBONES:
        raise ValueError(f"`--backbone` must be one of {sorted(BACKBONES)}. "
                         f"Received: backbone={name!r}")
    return BACKBONES[name]


def build_backbone(name: str, image_size, weights: str = "imagenet",
                   alpha: float = 1.0) -> keras.Model:
    """Builds a headless ImageNet backbone named ``"backbone"``.

    Args:
      name: a key of :data:`BACKBONES`.
      image_size: ``(height, width)`` of the input images.
      weights: ``"imagenet"`` (Keras' own download and cache in
        ``~/.keras/models``), ``"none"`` (random init) or a weights file path.
      alpha: width multiplier for the MobileNets.

    Returns:
      The backbone ``keras.Model`` (``include_top=False``).

    Raises:
      WeightsError: the ImageNet download failed (the message names the file
        to place in ``~/.keras/models``), or the given file does not fit.
    """
    spec = get_backbone(name)
    image_size = tuple(image_size)
    if min(image_size) < 32:
        raise ValueError(f"Backbone {name!r} needs images of at least 32x32. "
                         f"Received: image_size={image_size}")
    kwargs = dict(include_top=False, input_shape=(*image_size, 3))
    if spec.has_alpha:
        kwargs["alpha"] = alpha
    elif alpha != 1.0:
        logging.warning("--backbone_alpha=%s is ignored by backbone %s.", alpha, name)
    weights = weights or "none"
    if weights.lower() == "none":
        return _construct(spec, None, kwargs)
    if weights == "imagenet":
        try:
            return _construct(spec, "imagenet", kwargs)
        except Exception as e:  # download failures come as many exception types
            fname = spec.weights_file(alpha, image_size)
            raise WeightsError(
                f"Could not get the ImageNet weights of backbone {name!r}: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}. "
                f"Place the file {fname} in {KERAS_CACHE}/ (Keras' cache), or pass "
                f"--weights=/path/to/{fname}, or --weights=none to start from "
                "random initialisation.") from e
    path = os.path.expanduser(weights)
    if not os.path.isfile(path):
        raise WeightsError(f"`--weights` file not found: {weights!r}. Pass "
                           "'imagenet', 'none' or the path of a weights file.")
    try:
        model, asked = _construct_from_file(spec, path, kwargs)
    except Exception as e:
        raise WeightsError(
            f"Weights file {weights!r} does not match backbone {name!r}"
            f"{f' with alpha={alpha}' if spec.has_alpha else ''}: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}. Expected "
            f"a no-top ImageNet file such as {spec.weights_file(alpha, image_size)}."
        ) from e
    if asked is not None and not asked:
        raise RuntimeError(f"{spec.constructor.__name__} loaded no weights file; "
                           "this Keras version fetches weights another way.")
    return model


def _construct(spec: Backbone, weights, kwargs) -> keras.Model:
    """Calls the application, then names the model ``"backbone"``.

    Named afterwards: EfficientNet derives the ImageNet file it downloads
    from the model name (``efficientnetb0_notop.h5``).
    """
    model = spec.constructor(weights=weights, **kwargs)
    model.name = BACKBONE_NAME
    return model


@contextlib.contextmanager
def _keras_download_answered_by(path: str):
    """Makes ``keras.applications`` take ``path`` for the file it would download.

    Every application module fetches its weights through
    ``keras.src.utils.file_utils.get_file``; for the block, that function
    returns ``path`` instead (and records the file names asked for).
    Process-global while it lasts; restored even on error.

    Yields:
      The list of file names Keras asked for.
    """
    from keras.src.utils import file_utils  # pylint: disable=import-outside-toplevel
    original = file_utils.get_file
    asked = []

    def get_file(fname=None, *args, **kwargs):
        del args, kwargs
        asked.append(fname)
        return path

    file_utils.get_file = get_file
    try:
        yield asked
    finally:
        file_utils.get_file = original


def _construct_from_file(spec: Backbone, path: str, kwargs):
    """Builds the ``imagenet`` network of ``spec`` with the weights of ``path``.

    The ``imagenet`` route is not ``weights=None`` plus ``load_weights``:
    EfficientNet adds its input normalisation fix (``Rescaling`` by
    ``1/sqrt(variance)``) only for ``weights="imagenet"``. So the
    application builds its ``imagenet`` network and loads ``path`` where it
    would load the downloaded file. Settings for which Keras has no ImageNet
    weights (e.g. MobileNet widths other than 0.25-1.0), refused before any
    file is asked for, build the ``weights=None`` network, which for those
    backbones is the same, and load the file into it.

    Returns:
      ``(model, asked)``: ``asked`` lists the files the ``imagenet`` route
      asked for, None when it was refused.
    """
    with warnings.catch_warnings():
        # MobileNets warn that the 224x224 file is loaded for other sizes:
        # true of the download only, not of the user's file.
        warnings.filterwarnings("ignore", message=r"`input_shape` is undefined or non-square")
        with _keras_download_answered_by(path) as asked:
            try:
                model = _construct(spec, "imagenet", kwargs)
            except ValueError:
                if asked:
                    raise
                model = None
    if model is None:
        model = _construct(spec, None, kwargs)
        model.load_weights(path)
        return model, None
    return model, asked
