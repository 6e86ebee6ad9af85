"""Models of the four stages: the baseline CNN, transfer models, freeze/unfreeze.

Every model takes RGB images with values 0..255 (uint8 or float) and does
its own augmentation, rescaling and backbone preprocessing, so the same
pixels work for training, evaluation, prediction and the exported model::

    image -> [augmentation] -> rescale / backbone preprocess -> body -> float32 head

The head is float32 whatever the dtype policy, so a ``mixed_float16`` model
still returns float32 probabilities. The backbones themselves (registry,
ImageNet weights files) are :mod:`catdog.backbones`; the models ``fit``
trains in place of the saved one (XLA, empty batches) are
:mod:`catdog.fit_wrappers`.
"""

from __future__ import annotations

import os

import keras
from keras import ops

from catdog import augment
from catdog import config as config_lib
from catdog import decode
from catdog import precision
from catdog import rundir
# Re-exported: the backbone registry and weights route live in catdog.backbones.
from catdog.backbones import (BACKBONE_NAME, BACKBONES, KERAS_CACHE,  # noqa: F401
                              Backbone, WeightsError, build_backbone,
                              get_backbone)

PREPROCESS_NAME = "preprocess"
#: The last Dense layer; it computes in float32 under every dtype policy.
HEAD_NAME = "predictions"


@keras.saving.register_keras_serializable(package="catdog")
class Preprocess(keras.layers.Layer):
    """A backbone's ``preprocess_input`` as a serializable layer.

    Modes follow ``keras.applications.imagenet_utils``: ``caffe`` (RGB to
    BGR, ImageNet mean subtracted; VGG, ResNet), ``tf`` (scaled to [-1, 1];
    MobileNets), ``rescale`` (to [0, 1]; the baseline CNN) and ``none``
    (EfficientNet rescales inside the network). A layer rather than a Lambda,
    so a saved model loads in Keras' safe mode.
    """

    MODES = ("caffe", "tf", "rescale", "none")
    _CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"Preprocess mode must be one of {self.MODES}. "
                             f"Received: mode={mode!r}")
        self.mode = mode

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)  # RGB -> BGR
            return x - ops.cast(ops.convert_to_tensor(self._CAFFE_MEAN_BGR),
                                self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "rescale":
            return x / 255.0
        return x

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="catdog")
class InferenceBackbone(keras.layers.Wrapper):
    """Runs a nested backbone in inference mode, whatever the training flag.

    Keras 3's ``Functional.call`` hands the outer ``training`` flag to the
    layers it calls, so ``base(x, training=False)`` inside a functional model
    is overridden by ``fit``: a frozen backbone's Dropout (EfficientNet has
    one per block) would be active while the head trains. This layer's own
    ``call`` passes ``training=False`` to the backbone, so its BatchNorm and
    Dropout always infer, in stage 3 and in fine-tuning alike; gradients
    still reach the layers fine-tuning unfreezes. A registered layer, so a
    saved model loads in safe mode.
    """

    def call(self, inputs, training=None, mask=None):
        del training  # the backbone always infers
        return self.layer(inputs, training=False, mask=mask)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)


def _head(x, num_classes: int, dropout: float, pooling: str,
          zero_init: bool = False, multi_label: bool = False):
    if pooling == "flatten":
        x = keras.layers.Flatten(name="head_flatten")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="head_pool")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    # float32 whatever the policy: probabilities and the loss stay exact
    # under mixed precision. A head on pretrained features starts at zero
    # (every class equally likely): random init on large pooled activations
    # starts with confident, wrong logits and wastes the first epochs.
    init = "zeros" if zero_init else "glorot_uniform"
    if num_classes == 2 or multi_label:
        # Label sets: one independent sigmoid per label, also with two labels.
        return keras.layers.Dense(num_classes if multi_label else 1, activation="sigmoid",
                                  dtype="float32", kernel_initializer=init,
                                  name=HEAD_NAME)(x)
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                              kernel_initializer=init, name=HEAD_NAME)(x)


def image_input(image_size, channels: int = 3):
    """The input of every catdog model: ``(height, width, channels)`` pixels named ``image``.

    ``channels`` is 3, or 1 for a ``--color_mode=grayscale`` CNN.
    """
    return keras.Input(shape=(*tuple(image_size), int(channels)), name="image")


def _augmentation(model_config, seed):
    return augment.from_model_config(model_config, seed=seed)


def build_cnn(image_size, num_classes: int = 2, augmentation=None,
              dropout: float = 0.5, filters=(32, 64, 128),
              name: str = "baseline", multi_label: bool = False,
              channels: int = 3) -> keras.Model:
    """The small CNN of stages 1 and 2, on ``channels`` (3 or 1) input channels.

    ``[augmentation] -> Rescaling(1/255) -> 3 x (BatchNorm -> Conv 3x3 relu ->
    MaxPool 2) -> Flatten -> Dropout -> Dense``. The augmented tensor is what
    reaches the first convolution. ``multi_label``: one sigmoid per class.
    """
    inputs = image_input(image_size, channels)
    x = inputs
    if augmentation is not None:
        x = augmentation(x)
    x = keras.layers.Rescaling(1.0 / 255, name="rescaling")(x)
    for i, f in enumerate(filters):
        # momentum 0.9 (Keras default 0.99): the moving statistics used at
        # validation catch up within tens of steps, not hundreds, which is
        # what small folders of a few hundred photos give per run.
        # synchronized: under a distribution strategy the batch statistics
        # are those of the global batch, so every worker ends with the same
        # moving statistics (a no-op on one device).
        x = keras.layers.BatchNormalization(momentum=0.9, synchronized=True,
                                            name=f"block{i + 1}_bn")(x)
        x = keras.layers.Conv2D(f, 3, activation="relu", name=f"block{i + 1}_conv")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{i + 1}_pool")(x)
    outputs = _head(x, num_classes, dropout, "flatten", multi_label=multi_label)
    return keras.Model(inputs, outputs, name=name)


def build_transfer(image_size, num_classes: int, backbone_name: str = "vgg16",
                   weights: str = "imagenet", alpha: float = 1.0,
                   augmentation=None, dropout: float = 0.5, pooling: str = "avg",
                   name: str = "feature_extraction",
                   multi_label: bool = False) -> keras.Model:
    """Stage 3: [augmentation] -> preprocess -> frozen backbone -> new head.

    The backbone is frozen and runs inside an :class:`InferenceBackbone`, so
    its BatchNormalization and Dropout layers stay in inference mode during
    ``fit``, also after fine-tuning unfreezes the top block. ``multi_label``:
    one sigmoid per class.
    """
    spec = get_backbone(backbone_name)
    base = build_backbone(backbone_name, image_size, weights, alpha)
    base.trainable = False
    inputs = image_input(image_size)
    x = inputs
    if augmentation is not None:
        x = augmentation(x)
    x = Preprocess(spec.preprocess, name=PREPROCESS_NAME)(x)
    wrapper = InferenceBackbone(base, name=BACKBONE_NAME)
    wrapper.trainable = False
    x = wrapper(x)
    outputs = _head(x, num_classes, dropout, pooling, zero_init=True,
                    multi_label=multi_label)
    return keras.Model(inputs, outputs, name=name)


def build_model(config: config_lib.Config, num_classes: int) -> keras.Model:
    """Builds the model of ``config``'s stage (fine-tuning: see :func:`load_for_fine_tuning`)."""
    m, d = config.model, config.data
    aug = _augmentation(m, d.seed) if m.augment else None
    multi_label = bool(d.label_separator)
    if m.stage in ("baseline", "augmented"):
        return build_cnn(d.image_size, num_classes, aug, m.dropout, name=m.stage,
                         multi_label=multi_label,
                         channels=decode.options_of(d).channels)
    if m.stage == "feature_extraction":
        return build_transfer(d.image_size, num_classes, m.backbone, m.weights,
                              m.backbone_alpha, aug, m.dropout, m.head, name=m.stage,
                              multi_label=multi_label)
    raise ValueError(f"build_model cannot build stage {m.stage!r}; fine-tuning "
                     "starts from a finished model (load_for_fine_tuning).")


def backbone_layer(model: keras.Model) -> keras.layers.Layer:
    """Returns the layer of ``model`` that runs the backbone; ValueError if none.

    That is the :class:`InferenceBackbone` of a transfer model, or the nested
    backbone model itself in a model saved by an earlier catdog.
    """
    for layer in model.layers:
        if layer.name == BACKBONE_NAME and isinstance(
                layer, (InferenceBackbone, keras.Model)):
            return layer
    raise ValueError(f"Model {model.name!r} has no nested '{BACKBONE_NAME}' model; "
                     "fine-tuning needs a feature_extraction model.")


def find_backbone(model: keras.Model) -> keras.Model:
    """Returns the nested backbone model of a transfer model; ValueError if none."""
    layer = backbone_layer(model)
    return layer.layer if isinstance(layer, InferenceBackbone) else layer


def unfreeze_top(model: keras.Model, backbone_name: str,
                 num_layers: int = 0) -> int:
    """Unfreezes the backbone's top block, keeping every BatchNorm frozen.

    Args:
      model: a stage-3 model (its backbone is a nested model).
      backbone_name: registry name, for the default top block.
      num_layers: how many top layers to unfreeze; 0 means the backbone's
        top block (:attr:`Backbone.top_block_start` onward).

    Returns:
      The number of backbone layers made trainable (BatchNorm excluded).
      Recompile the model afterwards: Keras reads ``trainable`` at compile.
    """
    outer, base = backbone_layer(model), find_backbone(model)
    names = [layer.name for layer in base.layers]
    if num_layers <= 0:
        start_name = get_backbone(backbone_name).top_block_start
        if start_name not in names:
            raise ValueError(f"Backbone has no layer {start_name!r}; pass "
                             "--fine_tune_layers explicitly.")
        start = names.index(start_name)
    else:
        start = max(0, len(names) - num_layers)
    outer.trainable = True  # (also sets every layer of the backbone)
    base.trainable = True
    count = 0
    for i, layer in enumerate(base.layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = (i >= start) and not is_bn
        count += int(layer.trainable and bool(layer.weights))
    return count


def compile_model(model: keras.Model, num_classes: int, learning_rate,
                  jit_compile="auto", soft_labels: bool = False, *, optimizer=None,
                  top_k: int = 0, steps_per_execution: int = 1,
                  multi_label: bool = False) -> keras.Model:
    """Compiles with the run's optimizer, loss and metrics.

    Under a ``mixed_float16`` policy, ``compile`` wraps the optimizer in a
    ``LossScaleOptimizer`` by itself.

    Args:
      learning_rate: a rate or a ``LearningRateSchedule``, for the default
        optimizer (Adam) when ``optimizer`` is not given.
      soft_labels: the training labels are mixed (``--mixup`` /
        ``--cutmix``), see :func:`training_loss`.
      optimizer: the run's optimizer (:func:`training_optimizer`).
      top_k: also ``top_k_accuracy`` at this k (:func:`top_k_metrics`); 0: off.
      steps_per_execution: training steps per call of the compiled function.
      multi_label: label sets (multi-hot targets), see :func:`training_loss`.
    """
    top = top_k_metrics(top_k)
    if soft_labels:
        top = [DominantLabel(m) for m in top]
    model.compile(optimizer=optimizer or training_optimizer(learning_rate),
                  loss=training_loss(num_classes, soft_labels=soft_labels,
                                     multi_label=multi_label),
                  metrics=training_metrics(num_classes, soft_labels=soft_labels,
                                           multi_label=multi_label) + top,
                  jit_compile=jit_compile, steps_per_execution=steps_per_execution)
    return model


def training_optimizer(learning_rate, name: str = "adam", weight_decay=None,
                       momentum: float = 0.9) -> keras.optimizers.Optimizer:
    """The run's optimizer: Adam (the default of every stage), AdamW or SGD.

    Args:
      learning_rate: a rate or a ``LearningRateSchedule``.
      name: ``"adam"``, ``"adamw"`` or ``"sgd"``.
      weight_decay: decoupled weight decay; ``None``: Keras' default
        (AdamW 0.004; none for Adam and SGD).
      momentum: SGD's momentum.
    """
    decay = {} if weight_decay is None else {"weight_decay": weight_decay}
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, **decay)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum, **decay)
    if name != "adam":
        raise ValueError(f"`--optimizer` must be one of ('adam', 'adamw', 'sgd'). "
                         f"Received: optimizer={name!r}")
    return keras.optimizers.Adam(learning_rate, **decay)


def top_k_metrics(k: int) -> list:
    """``[SparseTopKCategoricalAccuracy(k, name="top_k_accuracy")]``, or ``[]`` for k=0."""
    if not k:
        return []
    return [keras.metrics.SparseTopKCategoricalAccuracy(k=k, name="top_k_accuracy")]


def resolve_top_k(top_k, num_classes: int) -> int:
    """The k of ``--top_k`` for ``num_classes`` (0: off).

    Unset: 5 with more than 5 classes, else off. Raises ValueError naming
    ``--top_k`` for two classes (one sigmoid output) or a k that is not
    below the number of classes (it would always be 1.0).
    """
    if top_k is None:
        return 5 if num_classes > 5 else 0
    if top_k and (num_classes <= 2 or top_k >= num_classes):
        raise ValueError(
            f"`--top_k` must be 0 or between 1 and the number of classes - 1 "
            f"({num_classes - 1}), with more than two classes; this run has "
            f"{num_classes}. Received: top_k={top_k!r}")
    return int(top_k)


def validation_metric_names(num_classes: int, top_k: int = 0,
                            multi_label: bool = False) -> list:
    """The ``val_`` keys a compiled catdog model logs: what ``--monitor`` may name."""
    names = ["loss"] + [m.name for m in training_metrics(num_classes, multi_label=multi_label)
                        + top_k_metrics(top_k)]
    return ["val_" + name for name in names]


def training_loss(num_classes: int, soft_labels: bool = False,
                  multi_label: bool = False) -> keras.losses.Loss:
    """Binary cross-entropy for two classes, sparse categorical cross-entropy for more.

    Label sets (``multi_label``): binary cross-entropy over every label. With ``soft_labels`` (mixed training labels: one-hot rows for more than
    two classes, validation labels one-hot too) more classes take
    categorical cross-entropy, the same number on hard labels.
    """
    if num_classes == 2 or multi_label:
        return keras.losses.BinaryCrossentropy()
    if soft_labels:
        return keras.losses.CategoricalCrossentropy()
    return keras.losses.SparseCategoricalCrossentropy()


#: Label sets with up to this many labels also log each label's precision,
#: recall and AUC in training (``label{i}_...``, label i being
#: ``class_names[i]``); with more, three columns per label would swamp
#: history.csv, and the per-label figures come from evaluate.py.
PER_LABEL_METRICS_MAX = 20


def training_metrics(num_classes: int, soft_labels: bool = False,
                     multi_label: bool = False) -> list:
    """Two classes: accuracy, precision, recall and AUC. More: accuracy.

    Label sets (``multi_label``): binary accuracy, precision and recall over
    every (image, label) pair, and the mean of the per-label ROC AUCs; with
    up to :data:`PER_LABEL_METRICS_MAX` labels also each label's precision,
    recall and AUC.

    With ``soft_labels`` each metric scores the dominant class of each
    (mixed) label, see :class:`DominantLabel`.
    """
    if soft_labels:
        return [DominantLabel(m) for m in training_metrics(num_classes)]
    if multi_label:
        out = [keras.metrics.BinaryAccuracy(name="accuracy"),
               keras.metrics.Precision(name="precision"),
               keras.metrics.Recall(name="recall"),
               keras.metrics.AUC(name="auc", multi_label=True, num_labels=num_classes)]
        if num_classes <= PER_LABEL_METRICS_MAX:
            for i in range(num_classes):
                out += [keras.metrics.Precision(class_id=i, name=f"label{i}_precision"),
                        keras.metrics.Recall(class_id=i, name=f"label{i}_recall"),
                        LabelColumn(keras.metrics.AUC(name=f"label{i}_auc"), i)]
        return out
    if num_classes == 2:
        return [keras.metrics.BinaryAccuracy(name="accuracy"),
                keras.metrics.Precision(name="precision"),
                keras.metrics.Recall(name="recall"),
                keras.metrics.AUC(name="auc")]
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


@keras.saving.register_keras_serializable(package="catdog")
class DominantLabel(keras.metrics.Metric):
    """A hard-label metric fed the dominant class of soft (mixed) labels.

    MixUp and CutMix make training labels soft; accuracy, precision, recall
    and AUC compare a label with a class, so a 0.7/0.3 label counts as its
    0.7 class. Labels ``(batch, 1)`` are rounded, one-hot rows ``(batch,
    classes)`` become their argmax (the wrapped metrics take catdog's hard
    encoding). Hard labels (validation) score exactly as without the wrapper.
    """

    def __init__(self, metric, name=None, dtype=None):
        if isinstance(metric, dict):
            metric = keras.saving.deserialize_keras_object(metric)
        super().__init__(name=name or metric.name, dtype=dtype or metric.dtype)
        self.metric = metric

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.convert_to_tensor(y_true)
        if y_true.shape[-1] == 1:
            y_true = ops.round(y_true)
        else:
            y_true = ops.argmax(y_true, axis=-1)
        return self.metric.update_state(y_true, y_pred, sample_weight=sample_weight)

    def result(self):
        return self.metric.result()

    def reset_state(self):
        self.metric.reset_state()

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype,
                "metric": keras.saving.serialize_keras_object(self.metric)}


@keras.saving.register_keras_serializable(package="catdog")
class LabelColumn(keras.metrics.Metric):
    """A metric of one label of a label set: column ``column`` of labels and predictions."""

    def __init__(self, metric, column: int, name=None, dtype=None):
        if isinstance(metric, dict):
            metric = keras.saving.deserialize_keras_object(metric)
        super().__init__(name=name or metric.name, dtype=dtype or metric.dtype)
        self.metric, self.column = metric, int(column)

    def update_state(self, y_true, y_pred, sample_weight=None):
        i = self.column
        return self.metric.update_state(ops.convert_to_tensor(y_true)[:, i:i + 1],
                                        ops.convert_to_tensor(y_pred)[:, i:i + 1],
                                        sample_weight=sample_weight)

    def result(self):
        return self.metric.result()

    def reset_state(self):
        self.metric.reset_state()

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "column": self.column,
                "metric": keras.saving.serialize_keras_object(self.metric)}


def load_model(path: str) -> keras.Model:
    """Loads a catdog ``model.keras`` (or a model dir) in Keras' safe mode."""
    if os.path.isdir(path):
        path = os.path.join(path, rundir.MODEL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No catdog model at {path!r}: expected the "
                                "model.keras of a finished run's model_dir.")
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as e:
        raise ValueError(f"{path!r} is not a loadable catdog Keras model: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                         ) from e


def load_for_fine_tuning(path: str, dtype_policy: str | None = None) -> keras.Model:
    """Loads a finished stage-3 (or stage-4) model to train under ``dtype_policy``.

    A saved model keeps the per-layer dtype policies it was built with, so
    a stage-3 model trained under ``mixed_float16`` would compute in float16
    in a float32 fine-tuning run (without loss scaling), and a float32 one
    would ignore ``mixed_float16``. The architecture is rebuilt from the
    saved config with every layer under ``dtype_policy``, except the layers
    catdog always keeps float32 (the head and the augmentation transforms),
    and the weights are copied over. A backbone saved bare by an earlier
    catdog is put inside an :class:`InferenceBackbone`.

    Args:
      path: a model dir or its ``model.keras``.
      dtype_policy: a Keras dtype policy name; None means the global policy.

    Returns:
      The model, with the saved weights and ``trainable`` flags.
    """
    loaded = load_model(path)
    policy = dtype_policy or keras.config.dtype_policy().name
    config = keras.saving.serialize_keras_object(loaded)
    config["config"]["layers"] = [_wrap_bare_backbone(layer)
                                  for layer in config["config"]["layers"]]
    _set_dtype_policies(config, policy)
    with precision.policy_scope(policy):  # also the outer model's own policy
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    model.set_weights(loaded.get_weights())
    return model


def _wrap_bare_backbone(layer_config: dict) -> dict:
    if layer_config.get("class_name") not in ("Functional", "Model") or \
            layer_config.get("config", {}).get("name") != BACKBONE_NAME:
        return layer_config
    inner = {k: v for k, v in layer_config.items() if k not in ("inbound_nodes", "name")}
    return {"module": InferenceBackbone.__module__, "class_name": "InferenceBackbone",
            "registered_name": keras.saving.get_registered_name(InferenceBackbone),
            "config": {"name": BACKBONE_NAME,
                       "trainable": layer_config["config"].get("trainable", True),
                       "dtype": None, "layer": inner},
            "name": BACKBONE_NAME, "inbound_nodes": layer_config["inbound_nodes"]}


def _set_dtype_policies(node: dict, policy: str, float32: bool = False) -> None:
    """Sets the ``dtype`` of every layer config under ``node`` (in place).

    Mirrors how catdog builds: everything under the global ``policy``,
    except the head and the layers inside the augmentation block, which are
    created with ``dtype="float32"``. Input layers keep their data dtype.
    """
    config = node.get("config")
    if not isinstance(config, dict):
        return
    name = config.get("name")
    if "dtype" in config and node.get("class_name") != "InputLayer":
        config["dtype"] = "float32" if float32 or name == HEAD_NAME else policy
    inside = float32 or name == augment.AUGMENTATION_NAME
    children = list(config.get("layers") or [])
    if isinstance(config.get("layer"), dict):
        children.append(config["layer"])
    for child in children:
        if isinstance(child, dict):
            _set_dtype_policies(child, policy, inside)


def _layers_and_float32(layer, float32: bool = False):
    """``(layer, catdog keeps it float32)`` for every layer nested in ``layer``."""
    inner = list(getattr(layer, "layers", None) or [])
    if isinstance(layer, keras.layers.Wrapper):
        inner.append(layer.layer)
    inside = float32 or layer.name == augment.AUGMENTATION_NAME
    for sub in inner:
        if isinstance(sub, keras.layers.InputLayer):
            continue
        yield sub, inside or sub.name == HEAD_NAME
        yield from _layers_and_float32(sub, inside)


def dtype_policy_name(model: keras.Model) -> str:
    """The dtype policy ``model``'s layers compute under, read from the layers.

    The layers catdog always keeps float32 (the head, the augmentation
    transforms) are left out. Layers under different policies give the
    names joined with ``", "``.
    """
    names = {layer.dtype_policy.name for layer, float32 in _layers_and_float32(model)
             if not float32}
    return ", ".join(sorted(names)) if names else model.dtype_policy.name


def count_params(weights) -> int:
    """Number of scalars in a list of weights."""
    return int(sum(int(ops.size(w)) for w in weights))
