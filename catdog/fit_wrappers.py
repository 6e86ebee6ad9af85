"""The models ``fit`` trains in place of the saved one.

Both share every layer and weight of the model they wrap, so training them
trains the model that is saved; neither is ever saved itself:

* :func:`empty_batch_safe`: evaluation and prediction answer a batch of zero
  images without running a layer (oneDNN on some CPUs cannot), for the
  empty per-replica validation batches of a multi-replica strategy;
* :func:`xla_training_model`: XLA on the network after augmentation, the
  part that can be compiled.
"""

from __future__ import annotations

import keras

from catdog import augment
from catdog import models


# ---------------------------------------------------------------------------
# Empty per-replica batches.
# ---------------------------------------------------------------------------

class _EmptyBatchSafeModel(keras.Model):
    """A functional model whose inference short-circuits an empty batch.

    oneDNN on some CPUs cannot convolve or multiply zero images (the op
    fails with a shape error instead of returning an empty result).
    Training batches are never empty; under a multi-replica strategy a
    validation batch smaller than the number of replicas leaves some
    replica with zero images.
    """

    def call(self, inputs, training=None, mask=None):
        run = super().call
        if training:
            return run(inputs, training=training, mask=mask)
        import tensorflow as tf  # catdog's models are TF-backend models
        first = keras.tree.flatten(inputs)[0]

        def empty():
            outputs = [tf.zeros([0, *t.shape[1:]], t.dtype) for t in self.outputs]
            # As Functional.call: a single output is returned bare.
            return outputs[0] if len(outputs) == 1 else outputs

        return tf.cond(tf.shape(first)[0] > 0,
                       lambda: run(inputs, training=training, mask=mask), empty)


def empty_batch_safe(model: keras.Model) -> keras.Model:
    """Returns ``model``'s graph as a model that answers an empty batch.

    The returned model shares ``model``'s layers and weights (and so the
    same weight file layout); its evaluation and prediction return empty
    outputs for a batch of zero examples without running any layer, so
    metrics count exactly the real examples. Training calls are unchanged.
    Training-only: save ``model`` itself.

    Args:
      model: a functional catdog model with fully defined output shapes
        after the batch axis.
    """
    return _EmptyBatchSafeModel(model.inputs, model.outputs, name=model.name)


# ---------------------------------------------------------------------------
# XLA: compile the network after augmentation.
# ---------------------------------------------------------------------------

class XlaNetwork(keras.layers.Layer):
    """Runs a (sub-)network through one XLA-compiled ``tf.function``.

    Keras turns XLA off for a whole model that holds the augmentation layers
    (their image-transform op has no XLA kernel). Wrapping only the network
    after augmentation keeps XLA where it can run. Training-only: it shares
    the wrapped network's weights and is never saved.
    """

    def __init__(self, network: keras.Model, **kwargs):
        super().__init__(**kwargs)
        import tensorflow as tf  # catdog's models are TF-backend models
        self.network = network
        self._compiled = tf.function(
            lambda x, training: self.network(x, training=training),
            jit_compile=True, reduce_retracing=True)

    def call(self, x, training=False):
        return self._compiled(x, training=bool(training))

    def compute_output_shape(self, input_shape):
        return self.network.compute_output_shape(input_shape)


def xla_training_model(model: keras.Model, jit: str, gpu: bool, replicas: int):
    """Decides what runs under XLA and returns the model to ``fit``.

    Args:
      model: the model to train (and save).
      jit: ``"auto"``, ``"true"`` or ``"false"``. ``auto`` uses XLA only on a
        single GPU (as Keras' own ``auto``: XLA off on CPU-only machines and
        under tf.distribute).
      gpu: whether a GPU is visible.
      replicas: replicas in sync.

    Returns:
      ``(train_model, compile_jit, description)``: the model to compile and
      fit (``model`` itself, or a wrapper sharing its weights whose network
      after augmentation is XLA-compiled), the ``jit_compile`` value for
      ``compile()``, and a plain sentence saying what runs compiled.
    """
    wanted = jit == "true" or (jit == "auto" and gpu and replicas == 1)
    if not wanted:
        why = ("--jit_compile=false" if jit == "false" else
               "--jit_compile=auto uses XLA only on a single GPU")
        return model, False, f"XLA off ({why}); nothing is compiled with XLA."
    aug = next((l for l in model.layers if isinstance(l, augment.Augmentation)), None)
    if aug is None:
        return model, True, "XLA on: the whole training step is compiled (jit_compile=True)."
    network = keras.Model(aug.output, model.output, name="network")
    inputs = models.image_input(model.input.shape[1:3], model.input.shape[-1])
    outputs = XlaNetwork(network, name="xla_network")(aug(inputs))
    train_model = keras.Model(inputs, outputs, name=f"{model.name}_xla")
    return train_model, False, (
        "XLA on for the network after augmentation (one XLA-compiled function); "
        "the augmentation block (RandomFlip/RandomRotation/RandomZoom, whose "
        "ImageProjectiveTransformV3 op has no XLA kernel), the loss and the "
        "optimizer update run without XLA.")
