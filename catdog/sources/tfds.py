"""TensorFlow Datasets as a catdog input source.

Any TFDS image-classification dataset with an ``image`` and a ``label``
(``ClassLabel``) feature works, e.g. ``cats_vs_dogs`` (23,262 images; TFDS
itself drops the 1,738 corrupt files of the original archive while it
prepares the data). Class names come from ``info.features["label"].names``.

Images are read as their ENCODED bytes (``tfds.decode.SkipDecoding``) and
decoded with :func:`catdog.decode.decode_and_resize`, the decode training,
evaluation, prediction and export share, then cached, shuffled and batched
like every other source (:func:`catdog.batching.batch_pipeline`).

Nothing is downloaded at import. :func:`index_tfds` prepares the dataset if
it is not in the data dir yet; without network that fails with a message
saying how to provide the prepared data (``--tfds_data_dir``).
"""

from __future__ import annotations

from typing import Optional

from absl import logging
import tensorflow as tf

from catdog import batching
from catdog import decode
from catdog import file_cache
from catdog import tfdata


def _tfds():
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError as e:  # optional dependency
        raise ValueError("`--tfds_name` needs the tensorflow-datasets package: "
                         "pip install tensorflow-datasets") from e
    return tfds


def load_builder(name: str, data_dir: str = ""):
    """Returns the prepared TFDS builder of ``name``.

    Prepares (downloads) the dataset when ``data_dir`` does not hold it yet.

    Raises:
      ValueError: unknown dataset, no image/label features, or the data is
        missing and cannot be downloaded here (the message says what to do).
    """
    tfds = _tfds()
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except Exception as e:  # DatasetNotFoundError and config errors
        raise ValueError(f"`--tfds_name` {name!r} is not a TFDS dataset "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__}). "
                         f"Received: tfds_name={name!r}") from e
    features = builder.info.features
    if ("image" not in features or "label" not in features
            or not isinstance(features["label"], tfds.features.ClassLabel)):
        raise ValueError(
            f"`--tfds_name` {name!r} is not an image-classification dataset with "
            f"'image' and 'label' (ClassLabel) features; it has {sorted(features.keys())}. "
            f"Received: tfds_name={name!r}")
    if not builder.is_prepared():
        where = data_dir or "TFDS' default data dir (~/tensorflow_datasets)"
        logging.info("Preparing TFDS dataset %s in %s (download).", name, where)
        try:
            builder.download_and_prepare()
        except Exception as e:  # no network, quota, missing manual files...
            raise ValueError(
                f"TFDS dataset {name!r} is not prepared in {where} and cannot be "
                f"downloaded here ({str(e).splitlines()[0] if str(e) else type(e).__name__}). "
                f"On a machine with network run `tfds build {name} --data_dir=DIR` "
                "(or tfds.builder(name, data_dir=DIR).download_and_prepare()), copy "
                f"DIR to this machine and pass --tfds_data_dir=DIR. "
                f"Received: tfds_data_dir={data_dir!r}") from e
    return builder


def _read(builder, split: str, shuffle_files: bool, seed: int, deterministic: bool):
    tfds = _tfds()
    read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False,
                                  interleave_cycle_length=tf.data.AUTOTUNE
                                  if not deterministic else 16)
    try:
        return builder.as_dataset(
            split=split, shuffle_files=shuffle_files, read_config=read_config,
            decoders={"image": tfds.decode.SkipDecoding()})
    except (ValueError, KeyError, AssertionError) as e:
        raise ValueError(f"TFDS split {split!r} of {builder.name!r} cannot be read: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}. "
                         "Use a split such as 'train[:80%]' (see the dataset's "
                         f"splits: {sorted(builder.info.splits.keys())}).") from e


def _num_examples(builder, split: str, seed: int) -> int:
    try:
        n = int(builder.info.splits[split].num_examples)
        if n > 0:
            return n
    except Exception:  # unknown split metadata: count instead
        pass
    # No metadata (e.g. a mocked dataset): count the records without decoding.
    ds = _read(builder, split, False, seed, True)
    return int(ds.reduce(0, lambda n, _: n + 1).numpy())


def index_tfds(data_config) -> batching.DataIndex:
    """The :class:`catdog.batching.DataIndex` of ``tfds_name`` with its two splits."""
    builder = load_builder(data_config.tfds_name, data_config.tfds_data_dir)
    class_names = list(builder.info.features["label"].names)
    if data_config.class_names and list(data_config.class_names) != class_names:
        raise ValueError(
            f"`--class_names` {list(data_config.class_names)} differ from the classes "
            f"of {data_config.tfds_name!r}: {class_names} (TFDS fixes the label order). "
            f"Received: class_names={','.join(data_config.class_names)}")
    splits = []
    for flag, split in (("train_split", data_config.train_split),
                        ("val_split", data_config.val_split)):
        try:
            splits.append(batching.SourceSplit(split, _num_examples(builder, split,
                                                                     data_config.seed)))
        except ValueError as e:
            raise ValueError(f"`--{flag}`: {e} Received: {flag}={split!r}") from e
    return batching.DataIndex(class_names, splits[0], splits[1], [])


def build_tfds_dataset(data_config, split: str, *, num_classes: int, image_size,
                       batch_size: int, training: bool, num_examples: int,
                       cache: str = "memory", seed: int = 1337, shuffle_buffer: int = 0,
                       deterministic: bool = False, dct_scaling: bool = False,
                       decode_options: Optional[decode.DecodeOptions] = None,
                       input_context=None) -> tf.data.Dataset:
    """Batches of ``(uint8 images, labels)`` from one TFDS split.

    Args:
      data_config: names the dataset (``tfds_name``, ``tfds_data_dir``).
      split: a TFDS split string, e.g. ``"train[:80%]"``.
      num_classes: number of classes (2 gives float labels of shape (1,)).
      image_size: ``(height, width)``.
      batch_size: global batch size.
      training: shuffle the files and examples; drop the last partial batch.
      num_examples: examples in the split (the default shuffle buffer).
      cache: ``"memory"``, ``"none"`` or a folder for cache files.
      seed: seed of the file and example shuffles.
      shuffle_buffer: example shuffle buffer; 0 means ``num_examples`` with
        ``cache="memory"``, else :data:`catdog.batching.STREAM_SHUFFLE_BUFFER`
        (a file cache then keeps the order of its first epoch, shuffled
        within that buffer).
      deterministic: fixed element order in the parallel stages.
      dct_scaling: decode with :func:`catdog.decode.decode_and_resize_scaled`.
      decode_options: the :class:`catdog.decode.DecodeOptions` of every image
        (default: ``DecodeOptions()``); part of the file cache key.
      input_context: the ``tf.distribute.InputContext`` of this worker under
        ``strategy.distribute_datasets_from_function``: every worker reads the
        encoded records in the same order (fixed seed and interleave) and
        keeps every ``num_input_pipelines``-th one before decoding, so the
        shares are a partition.

    Returns:
      The batched dataset.
    """
    image_size = tuple(int(s) for s in image_size)
    builder = load_builder(data_config.tfds_name, data_config.tfds_data_dir)
    share = None
    if input_context is not None:
        workers = int(input_context.num_input_pipelines)
        share = batching.worker_share(
            input_context, batching.element_shares(
                num_examples, workers), batch_size, training, f"TFDS split {split!r}")
        num_examples = share.num_examples
        # The same record order on every worker, whatever its core count.
        ds = _read(builder, split, training, seed, True).shard(workers, share.index)
    else:
        ds = _read(builder, split, training, seed, deterministic)
    decode_options = decode_options or decode.DecodeOptions()
    decode_image = decode.decoder(dct_scaling, decode_options)

    def load(example):
        return (decode_image(example["image"], image_size),
                batching.encode_labels(example["label"], num_classes))

    ds = ds.map(load, num_parallel_calls=tfdata.parallel_calls(), deterministic=deterministic)
    if cache not in ("memory", "none"):
        # The prepared data by version, folder and files (a rebuilt dataset is
        # another cache), the split, and what decides a worker's share.
        files = sorted(tf.io.gfile.glob(builder.data_dir.rstrip("/") + "/*"))
        identity = {"source": "tfds", "name": data_config.tfds_name,
                    "version": str(builder.info.version), "data_dir": builder.data_dir,
                    "files": file_cache.file_stamps(files),
                    "split": split, "seed": int(seed), "shuffle_files": bool(training),
                    "num_classes": int(num_classes), "image_size": list(image_size),
                    "dct_scaling": bool(dct_scaling), "decode": decode_options.record(),
                    "deterministic": bool(deterministic)}
        cache = file_cache.cache_prefix(
            cache, batching.split_name("tfds", share),
            identity) or "none"
    return batching.batch_pipeline(ds, training=training, batch_size=batch_size,
                                   num_examples=num_examples, cache=cache, seed=seed,
                                   shuffle_buffer=shuffle_buffer,
                                   deterministic=deterministic, share=share)


def evaluation_dataset(name, split, data_dir, image_size, batch_size, class_names,
                       decode_options):
    """A batched (uint8 images, labels, references) dataset from TFDS.

    Images are read as encoded bytes (``SkipDecoding``) and go through
    :func:`catdog.decode.decode_and_resize` with the model's ``decode_options``,
    so they get exactly the decode and resize of folder input. Returns the
    dataset and the TFDS class names (``[]`` when the label has none);
    :func:`catdog.evaluate.evaluate` reads a test split with it.
    """
    tfds = _tfds()

    builder = tfds.builder(name, data_dir=data_dir)
    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2:
        raise ValueError(f"TFDS dataset {name!r} has no (image, label) supervised "
                         "keys; --tfds_name needs an image classification dataset.")
    image_key, label_key = keys
    label_feature = builder.info.features[label_key]
    tfds_names = list(getattr(label_feature, "names", []) or [])
    if tfds_names and len(tfds_names) != len(class_names):
        raise ValueError(
            f"TFDS dataset {name!r} has classes {tfds_names}, but the model was "
            f"trained on classes {class_names}; they must be the same classes in "
            "the same label order.")
    if tfds_names and tfds_names != list(class_names):
        logging.warning("TFDS classes %s are matched to the model's classes %s by "
                        "label index.", tfds_names, class_names)
    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False,
                            decoders={image_key: tfds.decode.SkipDecoding()})
    image_size = tuple(image_size)
    ds = ds.enumerate().map(
        lambda i, ex: (decode.decode_and_resize(ex[0], image_size, decode_options),
                       tf.cast(ex[1], tf.int64), i),
        num_parallel_calls=tfdata.parallel_calls(), deterministic=True)
    return tfdata.finish(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE), True), tfds_names
