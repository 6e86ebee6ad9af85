import numpy as np
import tensorflow as tf

from catdog import augment


def test_block_has_the_recipe_layers_and_keeps_shape_and_range():
    block = augment.build_augmentation(seed=1)
    kinds = [type(l).__name__ for l in block.layers]
    assert kinds == ["RandomFlip", "RandomRotation", "RandomZoom"]
    x = np.random.RandomState(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    y = block(x, training=True).numpy()
    assert y.shape == x.shape and y.dtype == np.float32
    assert y.min() >= 0 and y.max() <= 255.5
    assert not np.allclose(y, x)


def test_inactive_at_inference():
    block = augment.build_augmentation(seed=1)
    x = np.random.RandomState(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_array_equal(block(x, training=False).numpy(), x)
    np.testing.assert_array_equal(block(x).numpy(), x)


def test_zero_strength_leaves_layers_out():
    block = augment.build_augmentation(flip="none", rotation=0.0, zoom=0.2)
    assert [type(l).__name__ for l in block.layers] == ["RandomZoom"]


def test_works_inside_tf_data():
    block = augment.build_augmentation(seed=3)
    ds = tf.data.Dataset.from_tensors(tf.ones((2, 8, 8, 3)) * 100).map(
        lambda x: block(x, training=True))
    out = next(iter(ds))
    assert out.shape == (2, 8, 8, 3)
