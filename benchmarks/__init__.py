"""Benchmarks of catdog's input pipeline (not part of the installed package).

- ``python -m benchmarks`` (or ``scripts/benchmark_input.py``): catdog
  against the stock Keras loaders (:mod:`benchmarks.input_benchmark`, the
  loaders it times in :mod:`benchmarks.input_loaders`; with ``--model_dir``
  a run's training step, :mod:`benchmarks.input_model`); with ``--scale``
  listing, checking and splitting at growing file counts
  (:mod:`benchmarks.input_scale`);
- ``python -m benchmarks.measure_memory`` (or
  ``scripts/measure_input_memory.py``): peak memory of one training epoch
  (:mod:`benchmarks.input_memory`).
"""
