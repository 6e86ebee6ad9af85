import os

import keras
import numpy as np
import pytest

from catdog import config as C
from catdog import models
from helpers import SHARED
from test_backbones import _ALPHA

MOBILENET = os.path.join(SHARED, "weights", "mobilenet_2_5_224_tf_no_top.h5")


def _cfg(stage, **model):
    c = C.for_stage(stage)
    c.data.image_size = (32, 32)
    for k, v in model.items():
        setattr(c.model, k, v)
    return c


def test_baseline_architecture_params_and_output():
    m = models.build_model(_cfg("baseline"), num_classes=2)
    kinds = [type(l).__name__ for l in m.layers]
    assert kinds == ["InputLayer", "Rescaling",
                     "BatchNormalization", "Conv2D", "MaxPooling2D",
                     "BatchNormalization", "Conv2D", "MaxPooling2D",
                     "BatchNormalization", "Conv2D", "MaxPooling2D",
                     "Flatten", "Dropout", "Dense"]
    assert [l.filters for l in m.layers if isinstance(l, keras.layers.Conv2D)] == [32, 64, 128]
    # 32x32 -> 15 -> 6 -> 2: flatten 2*2*128 = 512 -> Dense(1).
    assert m.output.shape[1:] == (1,)
    assert models.count_params(m.weights) == 12 + 896 + 128 + 18496 + 256 + 73856 + 513
    out = m(np.zeros((2, 32, 32, 3), np.uint8))
    assert out.dtype == "float32"


def test_augmentation_reaches_the_network():
    m = models.build_model(_cfg("augmented"), num_classes=2)
    aug = m.get_layer("augmentation")
    # The first layer after the input is the augmentation block, and the
    # rescaling layer consumes its output (not the raw input).
    assert m.layers[1] is aug
    assert m.get_layer("rescaling").input is aug.output
    x = np.random.RandomState(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    a, b = m(x, training=True), m(x, training=True)
    assert not np.allclose(a, b)  # random augmentation changes training outputs
    np.testing.assert_allclose(m(x, training=False), m(x, training=False))


def test_fit_augments_and_predict_does_not(monkeypatch):
    from catdog import augment
    seen = []
    original = augment.Augmentation.call

    def spy(self, inputs, training=False, mask=None):
        seen.append(bool(training))
        return original(self, inputs, training=training, mask=mask)

    monkeypatch.setattr(augment.Augmentation, "call", spy)
    m = models.build_model(_cfg("augmented"), num_classes=2)
    models.compile_model(m, 2, 1e-3)
    x = np.random.RandomState(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.ones((8, 1), np.float32)
    seen.clear()
    m.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert seen and all(seen)  # every traced training call augments
    seen.clear()
    m.predict(x, verbose=0)
    m.evaluate(x, y, verbose=0)
    m(x)
    assert seen and not any(seen)


def test_multiclass_head_is_softmax():
    m = models.build_model(_cfg("baseline"), num_classes=3)
    out = m(np.zeros((2, 32, 32, 3), np.float32)).numpy()
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_feature_extraction_freezes_backbone_and_fine_tuning_unfreezes_block5():
    m = models.build_model(_cfg("feature_extraction", backbone="vgg16", weights="none"), 2)
    base = models.find_backbone(m)
    assert not base.trainable
    assert [w.name for w in m.trainable_weights] == ["kernel", "bias"]  # head only
    assert models.count_params(m.trainable_weights) == 512 + 1
    n = models.unfreeze_top(m, "vgg16")
    assert n == 3  # block5_conv1..3 (block5_pool has no weights)
    trainable = [l.name for l in base.layers if l.trainable]
    assert trainable == ["block5_conv1", "block5_conv2", "block5_conv3", "block5_pool"]


def test_fine_tuning_keeps_batchnorm_frozen():
    m = models.build_model(_cfg("feature_extraction", backbone="mobilenet",
                                backbone_alpha=0.25, weights="none"), 2)
    models.unfreeze_top(m, "mobilenet", num_layers=20)
    base = models.find_backbone(m)
    bns = [l for l in base.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and not any(l.trainable for l in bns)
    assert any(l.trainable for l in base.layers if isinstance(l, keras.layers.Conv2D))
    # The backbone is called with training=False: BN statistics do not move.
    before = [w.numpy().copy() for l in bns for w in l.non_trainable_weights]
    models.compile_model(m, 2, 1e-3)
    x = np.random.RandomState(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    m.train_on_batch(x, np.ones((4, 1), np.float32))
    after = [w.numpy() for l in bns for w in l.non_trainable_weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_preprocess_modes_match_keras_applications():
    x = np.random.RandomState(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    vgg = keras.applications.vgg16.preprocess_input(x.copy())
    np.testing.assert_allclose(models.Preprocess("caffe")(x), vgg, rtol=1e-5, atol=1e-4)
    mob = keras.applications.mobilenet.preprocess_input(x.copy())
    np.testing.assert_allclose(models.Preprocess("tf")(x), mob, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="mode"):
        models.Preprocess("torchvision")


def test_mixed_precision_head_is_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    m = models.build_model(_cfg("augmented"), num_classes=2)
    assert m.get_layer("block1_conv").compute_dtype == "float16"
    assert m.get_layer("predictions").compute_dtype == "float32"
    out = m(np.zeros((1, 32, 32, 3), np.float32))
    assert out.dtype == "float32"
    models.compile_model(m, 2, 1e-3)
    assert isinstance(m.optimizer, keras.optimizers.LossScaleOptimizer)


def test_saved_model_loads_in_safe_mode(tmp_path):
    m = models.build_model(_cfg("feature_extraction", backbone="mobilenet",
                                backbone_alpha=0.25, weights="none"), 2)
    path = str(tmp_path / "model.keras")
    m.save(path)
    loaded = models.load_model(str(tmp_path))
    x = np.random.RandomState(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x), m(x), rtol=1e-5, atol=1e-6)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a loadable"):
        models.load_model(str(tmp_path / "junk"))


def _backbone_probe(model):
    """The whole model's graph up to the backbone output (same layers)."""
    return keras.Model(model.inputs, model.get_layer("head_pool").input)


@pytest.mark.parametrize("name", sorted(models.BACKBONES))
def test_backbone_runs_in_inference_mode_when_the_model_trains(name):
    # Keras 3's Functional.call hands the outer training flag to nested
    # models, which would switch on e.g. EfficientNet's per-block Dropout in
    # fit: the backbone must compute the same features in training.
    m = models.build_transfer((32, 32), 2, name, weights="none",
                              alpha=_ALPHA.get(name, 1.0), dropout=0.0)
    probe = _backbone_probe(m)
    x = np.random.RandomState(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    reference = probe(x, training=False).numpy()
    assert np.abs(reference).max() > 0
    np.testing.assert_array_equal(probe(x, training=True).numpy(), reference)
    np.testing.assert_array_equal(probe(x, training=True).numpy(), reference)
    np.testing.assert_array_equal(m(x, training=True).numpy(), m(x, training=True).numpy())
    # Also once fine-tuning has unfrozen the top block.
    models.unfreeze_top(m, name)
    np.testing.assert_array_equal(probe(x, training=True).numpy(), reference)


def test_saved_transfer_model_keeps_its_backbone_in_inference_mode(tmp_path):
    m = models.build_transfer((32, 32), 2, "efficientnet_b0", weights="none", dropout=0.0)
    m.save(str(tmp_path / "model.keras"))
    loaded = models.load_model(str(tmp_path))
    assert models.find_backbone(loaded).name == models.BACKBONE_NAME
    assert isinstance(models.find_backbone(loaded), keras.Model)
    x = np.random.RandomState(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    probe = _backbone_probe(loaded)
    np.testing.assert_array_equal(probe(x, training=True).numpy(),
                                  probe(x, training=False).numpy())
    np.testing.assert_allclose(loaded(x).numpy(), m(x).numpy(), rtol=1e-6)


def _top_and_rest(m, name):
    base = models.find_backbone(m)
    start = [l.name for l in base.layers].index(models.BACKBONES[name].top_block_start)
    top = [l for l in base.layers[start:] if l.trainable and l.weights]
    below = [l for l in base.layers[:start] if l.weights]
    bns = [l for l in base.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert top and below and bns
    return top, below, bns


@pytest.mark.skipif(not os.path.exists(MOBILENET), reason="shared weights absent")
def test_fine_tuning_trains_the_unfrozen_top_block_only():
    # Real weights: a random MobileNet's features at this size are ~1e-16 and
    # its gradients too small for Adam to move a float32 weight.
    m = models.build_transfer((64, 64), 2, "mobilenet", weights=MOBILENET, alpha=0.25)
    models.unfreeze_top(m, "mobilenet")
    top, below, bns = _top_and_rest(m, "mobilenet")
    snapshot = lambda layers: [w.numpy().copy() for l in layers for w in l.weights]
    top0, below0, bn0 = snapshot(top), snapshot(below), snapshot(bns)
    models.compile_model(m, 2, 1e-3)
    x = np.random.RandomState(0).uniform(0, 255, (8, 64, 64, 3)).astype("float32")
    y = np.array([[0], [1]] * 4, np.float32)
    # The head starts at zero, so the backbone gets gradient from step 2 on.
    m.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert all(not np.array_equal(a, b) for a, b in zip(top0, snapshot(top)))
    assert all(np.array_equal(a, b) for a, b in zip(below0, snapshot(below)))
    assert all(np.array_equal(a, b) for a, b in zip(bn0, snapshot(bns)))


def test_fine_tuned_efficientnet_top_block_gets_gradients():
    import tensorflow as tf
    m = models.build_transfer((32, 32), 2, "efficientnet_b0", weights="none")
    models.unfreeze_top(m, "efficientnet_b0")
    top, below, _ = _top_and_rest(m, "efficientnet_b0")
    trainable = {id(w) for w in m.trainable_weights}
    assert {id(w) for l in top for w in l.weights if w.trainable} <= trainable
    assert not {id(w) for l in below for w in l.weights} & trainable
    head = m.get_layer("predictions")
    head.kernel.assign(np.random.RandomState(1).normal(size=head.kernel.shape))
    x = np.random.RandomState(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    with tf.GradientTape() as tape:
        loss = keras.losses.binary_crossentropy(np.ones((4, 1)), m(x, training=True))
    weights = [w for l in top for w in l.trainable_weights]
    grads = tape.gradient(loss, weights)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def _stage3(policy, tmp_path):
    from catdog import augment, precision
    with precision.policy_scope(policy):
        m = models.build_transfer((32, 32), 2, "mobilenet", weights="none", alpha=0.25,
                                  augmentation=augment.build_augmentation(seed=1))
    head = m.get_layer("predictions")
    head.kernel.assign(np.random.RandomState(2).normal(size=head.kernel.shape))
    m.save(str(tmp_path / "model.keras"))
    return m


@pytest.mark.parametrize("saved, wanted", [("mixed_float16", "float32"),
                                           ("float32", "mixed_float16"),
                                           ("float32", "mixed_bfloat16")])
def test_load_for_fine_tuning_computes_under_the_requested_policy(saved, wanted, tmp_path):
    from catdog import precision
    original = _stage3(saved, tmp_path)
    with precision.policy_scope("float32"):  # whatever the global policy
        m = models.load_for_fine_tuning(str(tmp_path), wanted)
    compute = wanted.replace("mixed_", "") if wanted != "float32" else "float32"
    assert m.dtype_policy.name == wanted
    assert models.dtype_policy_name(m) == wanted
    assert m.get_layer("preprocess").compute_dtype == compute
    assert models.find_backbone(m).get_layer("conv_pw_13").compute_dtype == compute
    assert m.get_layer("predictions").compute_dtype == "float32"
    assert all(l.compute_dtype == "float32" for l in m.get_layer("augmentation").layers)
    assert keras.backend.standardize_dtype(m.output.dtype) == "float32"
    assert isinstance(models.backbone_layer(m), models.InferenceBackbone)
    for a, b in zip(m.get_weights(), original.get_weights()):
        np.testing.assert_array_equal(a, b)
    models.unfreeze_top(m, "mobilenet")
    models.compile_model(m, 2, 1e-4)
    assert isinstance(m.optimizer, keras.optimizers.LossScaleOptimizer) == (
        wanted == "mixed_float16")
    x = np.random.RandomState(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(m(x).numpy(), original(x).numpy(), atol=2e-2)


def test_load_for_fine_tuning_wraps_a_bare_backbone(tmp_path):
    # The layout earlier catdog saved: the backbone model called directly.
    base = models.build_backbone("mobilenet", (32, 32), "none", alpha=0.25)
    base.trainable = False
    inputs = keras.Input((32, 32, 3), name="image")
    x = models.Preprocess("tf", name="preprocess")(inputs)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    out = keras.layers.Dense(1, activation="sigmoid", dtype="float32",
                             name="predictions")(x)
    old = keras.Model(inputs, out, name="feature_extraction")
    old.get_layer("predictions").kernel.assign(np.random.RandomState(2).normal(size=(256, 1)))
    old.save(str(tmp_path / "model.keras"))
    assert models.backbone_layer(models.load_model(str(tmp_path))).__class__ is not \
        models.InferenceBackbone
    m = models.load_for_fine_tuning(str(tmp_path), "float32")
    assert isinstance(models.backbone_layer(m), models.InferenceBackbone)
    assert not models.find_backbone(m).trainable
    x = np.random.RandomState(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(m(x).numpy(), old(x).numpy())
    assert models.unfreeze_top(m, "mobilenet") == 10  # blocks 9-13: dw + pw each


# ---------------------------------------------------------------------------
# Soft (mixed) labels: --mixup / --cutmix
# ---------------------------------------------------------------------------

def test_soft_labels_take_a_loss_for_soft_targets():
    assert isinstance(models.training_loss(2, soft_labels=True), keras.losses.BinaryCrossentropy)
    assert isinstance(models.training_loss(3, soft_labels=True),
                      keras.losses.CategoricalCrossentropy)
    assert isinstance(models.training_loss(3), keras.losses.SparseCategoricalCrossentropy)
    # The same number as the sparse loss on hard labels (validation).
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], np.float32)
    sparse = models.training_loss(3)(np.array([0, 2]), p)
    soft = models.training_loss(3, soft_labels=True)(np.eye(3, dtype=np.float32)[[0, 2]], p)
    assert float(soft) == pytest.approx(float(sparse), rel=1e-6)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_metrics_on_soft_labels_score_the_dominant_label(num_classes):
    rng = np.random.RandomState(0)
    if num_classes == 2:
        soft = rng.uniform(0, 1, (64, 1)).astype(np.float32)
        hard = np.round(soft)
        pred = rng.uniform(0, 1, (64, 1)).astype(np.float32)
    else:
        soft = rng.dirichlet([0.5] * 3, 64).astype(np.float32)
        hard = soft.argmax(axis=1)
        pred = rng.dirichlet([1.0] * 3, 64).astype(np.float32)
    soft_metrics = models.training_metrics(num_classes, soft_labels=True)
    plain = models.training_metrics(num_classes)
    assert [m.name for m in soft_metrics] == [m.name for m in plain]
    for on_soft, on_hard in zip(soft_metrics, plain):
        on_soft.update_state(soft, pred)
        on_hard.update_state(hard, pred)
        assert float(on_soft.result()) == pytest.approx(float(on_hard.result()), rel=1e-6), \
            on_hard.name
    # Hard labels (validation) score exactly as the plain metrics.
    one_hot = hard if num_classes == 2 else np.eye(3, dtype=np.float32)[hard]
    for on_soft, on_hard in zip(models.training_metrics(num_classes, soft_labels=True), plain):
        on_soft.update_state(one_hot, pred)
        assert float(on_soft.result()) == pytest.approx(float(on_hard.result()), rel=1e-6)


def test_a_model_compiled_for_soft_labels_trains_and_saves(tmp_path):
    m = models.build_model(_cfg("baseline"), num_classes=3)
    models.compile_model(m, 3, 1e-3, soft_labels=True)
    x = np.random.RandomState(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    y = np.random.RandomState(1).dirichlet([0.5] * 3, 8).astype(np.float32)
    history = m.fit(x, y, epochs=1, verbose=0)
    assert {"loss", "accuracy"} <= set(history.history)
    m.save(tmp_path / "m.keras")
    assert models.load_model(str(tmp_path / "m.keras")).output.shape[1:] == (3,)
