"""tf.data service: the training input decoded on other machines.

A dispatcher (:func:`start_dispatcher`) hands out the training files to any
number of workers (:func:`start_worker`); a trainer run with
``--data_service=grpc://HOST:PORT`` registers its training pipeline with the
dispatcher (:func:`distribute`) and receives batches. Validation stays in the
trainer: it is exact, in file order, every example once.

Sharding is dynamic (``ShardingPolicy.DYNAMIC``): the dispatcher deals the
file list out one file at a time to whichever worker asks, so every file is
read once per epoch whatever the number of workers, and workers may come and
go. Nothing is cached on the workers: with dynamic sharding a worker gets
other files every epoch, so a cache of its first epoch would replay the
wrong files, and a worker builds its pipeline anew for every epoch anyway.
"""

from __future__ import annotations

import re
import signal
import socket
import threading
from typing import Optional

import tensorflow as tf
from absl import logging

from catdog import batching
from catdog import tfdata

_ADDRESS = re.compile(r"^grpc://(?P<host>[^:/\s]+|\[[0-9a-fA-F:.]+\]):(?P<port>\d{1,5})$")
_HOST_PORT = re.compile(r"^(?P<host>[^:/\s]+|\[[0-9a-fA-F:.]+\]):(?P<port>\d{1,5})$")


def parse_address(value: str, flag: str = "data_service") -> tuple:
    """``(host, port)`` of ``grpc://HOST:PORT``.

    Raises:
      ValueError: naming ``flag``, the value and the expected form.
    """
    match = _ADDRESS.match(value or "")
    if not match or not 0 < int(match["port"]) < 65536:
        raise ValueError(
            f"`--{flag}` must be the tf.data service dispatcher as grpc://HOST:PORT "
            f"(e.g. grpc://dispatcher-host:5050, started with scripts/data_service.py "
            f"--dispatcher). Received: {flag}={value!r}")
    return match["host"].strip("[]"), int(match["port"])


def parse_host_port(value: str, flag: str = "dispatcher_address") -> tuple:
    """``(host, port)`` of ``HOST:PORT`` (no scheme), for the worker's dispatcher."""
    match = _HOST_PORT.match(value or "")
    if not match or not 0 < int(match["port"]) < 65536:
        raise ValueError(
            f"`--{flag}` must be the dispatcher as HOST:PORT (e.g. dispatcher-host:5050). "
            f"Received: {flag}={value!r}")
    return match["host"].strip("[]"), int(match["port"])


def check_port(port: int, flag: str = "port", allow_zero: bool = False) -> int:
    """``port`` as an int, or ValueError naming ``flag``."""
    low = 0 if allow_zero else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port < 65536:
        raise ValueError(f"`--{flag}` must be a TCP port between {low} and 65535. "
                         f"Received: {flag}={port!r}")
    return port


def check_reachable(service: str, timeout: float = 10.0) -> None:
    """Raises ValueError naming ``--data_service`` when no dispatcher listens there.

    Without the check a trainer would retry registering its dataset for a
    long time before failing with a gRPC error.
    """
    host, port = parse_address(service)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise ValueError(
            f"`--data_service` {service}: no tf.data service dispatcher answers at "
            f"{host}:{port} ({e}). Start one there with `python scripts/data_service.py "
            f"--dispatcher --port={port}` (and workers), or fix the address. "
            f"Received: data_service={service!r}") from None


def distribute(ds: tf.data.Dataset, service: str) -> tf.data.Dataset:
    """``ds`` run by the service's workers, dynamically sharded; ops after it run here.

    No ``job_name``: a trainer is the only consumer of its jobs, and a job of
    its own per epoch (Keras iterates every epoch afresh) can never be joined
    by a restarted run reusing the name.
    """
    return ds.apply(tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
        service=service))


def service_pipeline(ds: tf.data.Dataset, *, service: str, batch_size: int,
                     num_examples: int, shuffle_buffer: int) -> tf.data.Dataset:
    """The training tail when ``--data_service`` is set.

    On the workers: shuffle (within each worker's buffer, anew every epoch)
    -> batch, keeping each worker's last partial batch (a worker's share of
    an epoch is not known in advance). In the trainer: the batches are cut
    again into ``batch_size`` with ``drop_remainder=True``, so every step
    has the static shape training needs and an epoch is exactly
    ``num_examples // batch_size`` steps, each example at most once (as
    without the service, fewer than ``batch_size`` are left out per epoch).

    Args:
      ds: decoded ``(uint8 image, label)`` elements whose source is
        splittable (a ``from_tensor_slices`` file list).
      service: ``grpc://HOST:PORT`` of the dispatcher.
      batch_size: global batch size.
      num_examples: elements of ``ds``.
      shuffle_buffer: per-worker shuffle buffer; 0: the stream default.
    """
    n = max(1, int(num_examples))
    buffer = min(n, int(shuffle_buffer) or batching.STREAM_SHUFFLE_BUFFER)
    ds = _unseeded_shuffle(ds, buffer)
    ds = ds.batch(batch_size, drop_remainder=False, num_parallel_calls=tfdata.parallel_calls(),
                  deterministic=False)
    ds = tfdata.finish(ds.prefetch(tf.data.AUTOTUNE))  # on the workers
    ds = distribute(ds, service)
    ds = ds.rebatch(batch_size, drop_remainder=True)
    ds = ds.apply(tf.data.experimental.assert_cardinality(n // batch_size))
    return tfdata.finish(ds.prefetch(tf.data.AUTOTUNE))  # in the trainer


def _unseeded_shuffle(ds: tf.data.Dataset, buffer: int) -> tf.data.Dataset:
    """``ds.shuffle(buffer)`` with seeds drawn anew by every pipeline instance.

    A worker builds its pipeline anew for every epoch, so any fixed seed
    repeats the same permutation every epoch, and without an explicit seed
    tf.data derives a fixed one from the global seed (which a training run
    sets). Built while the global seed reads as unset, the shuffle op gets
    seeds (0, 0): random on every instance. Only the seed value is swapped;
    the global op-seed sequence goes on unchanged.
    """
    from tensorflow.python.eager import context  # pylint: disable=import-outside-toplevel
    ctx = context.context()
    saved = ctx._seed  # pylint: disable=protected-access
    ctx._seed = None  # pylint: disable=protected-access
    try:
        return ds.shuffle(buffer, reshuffle_each_iteration=True)
    finally:
        ctx._seed = saved  # pylint: disable=protected-access


def start_dispatcher(port: int, work_dir: Optional[str] = None, **config
                     ) -> tf.data.experimental.service.DispatchServer:
    """A started dispatcher on ``port`` (0: any free port).

    ``work_dir`` (with fault-tolerant mode) keeps its state so a restarted
    dispatcher resumes its jobs; ``config`` holds further
    ``DispatcherConfig`` fields (e.g. ``job_gc_timeout_ms``).
    """
    check_port(port, allow_zero=True)
    config = tf.data.experimental.service.DispatcherConfig(
        port=port, work_dir=work_dir or None, fault_tolerant_mode=bool(work_dir), **config)
    return tf.data.experimental.service.DispatchServer(config)


def start_worker(dispatcher_address: str, port: int, host: Optional[str] = None
                 ) -> tf.data.experimental.service.WorkerServer:
    """A started worker on ``port`` that registers with ``dispatcher_address``.

    Args:
      dispatcher_address: ``HOST:PORT`` of the dispatcher.
      port: port to serve on (0: any free port).
      host: name or address trainers reach this worker at (the dispatcher
        hands it out to them); default: this machine's host name.
    """
    parse_host_port(dispatcher_address)
    check_port(port, allow_zero=True)
    host = host or socket.gethostname()
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=dispatcher_address, port=port,
        worker_address=f"{host}:{port}" if port else f"{host}:%port%")
    return tf.data.experimental.service.WorkerServer(config)


def serve_until_signal(server, what: str,
                       signals=(signal.SIGTERM, signal.SIGINT)) -> str:
    """Blocks until one of ``signals`` arrives, then stops ``server``.

    Call from the main thread. Returns the signal's name (``"SIGTERM"``).
    """
    received = []
    stop = threading.Event()

    def handler(signum, _frame):
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    logging.info("%s stopped on %s", what, received[0])
    server.stop()
    return received[0]
