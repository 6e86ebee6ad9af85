"""The input sources: each turns its input into a DataIndex and batched datasets.

- :mod:`~catdog.sources.folder`: a tree of class subfolders;
- :mod:`~catdog.sources.csv_labels`: files labelled by the rows of a CSV
  (read by the folder source's ``build_dataset``);
- :mod:`~catdog.sources.tfrecords`: shards written by
  :mod:`~catdog.sources.tfrecord_writer` (``scripts/build_tfrecords.py``);
- :mod:`~catdog.sources.tfds`: a TensorFlow Datasets dataset.

Every source decodes with :mod:`catdog.decode` and ends in
:func:`catdog.batching.batch_pipeline`; :mod:`catdog.data` picks the source
a config names. Sources never import :mod:`catdog.data`.
"""
