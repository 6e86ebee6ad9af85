"""Distribution strategies and multi-worker plumbing for catdog training jobs.

Everything here drops into a plain Keras ``model.fit`` training function
(the Keras fix for multi-worker ``fit`` is :mod:`catdog.keras_patches`)::

    strategy = distribute.build_strategy(name)      # first TF call of the job
    keras_patches.apply_keras_multiworker_fix(strategy)
    per_replica = distribute.global_batch_check(batch_size, strategy)
    out_dir = distribute.artifact_dir(model_dir, strategy)
    with strategy.scope():
        model = ...; model.compile(...)
    model.fit(distribute.with_shard_policy(train_ds, policy), ...)
    distribute.cleanup_artifact_dir(out_dir, model_dir)

``--batch_size`` is the GLOBAL batch size: every training batch is split evenly
across ``strategy.num_replicas_in_sync`` replicas, so it must divide evenly
(an uneven last batch crashes oneDNN on CPU under MirroredStrategy and breaks
Keras 3's first symbolic build under a strategy).
"""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

_log = logging.getLogger(__name__)

STRATEGY_NAMES = ("auto", "default", "one_device", "mirrored", "multi_worker",
                  "tpu")

_TF_CONFIG_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
    '"task": {"type": "worker", "index": 0}}\'')


# --------------------------------------------------------------------------
# Strategies


def build_strategy(name: str = "auto",
                   tpu: str | None = None) -> tf.distribute.Strategy:
    """Builds the ``tf.distribute`` strategy a training job runs under.

    Call it before any other TensorFlow op of the process: a multi-worker or
    TPU strategy configures the TensorFlow runtime and fails once it has
    started.

    Args:
      name: one of ``STRATEGY_NAMES``.
        ``auto``: MirroredStrategy when more than one GPU is visible, else the
        default (no-op) strategy. It never starts a multi-worker job by itself;
        it warns when ``TF_CONFIG`` describes a cluster.
        ``default``: the default strategy (one device, no distribution).
        ``one_device``: OneDeviceStrategy on the first GPU, else the CPU.
        ``mirrored``: MirroredStrategy over all local GPUs; without GPUs,
        over the logical CPU devices (one replica unless the process split
        its CPU with ``tf.config.set_logical_device_configuration``).
        ``multi_worker``: MultiWorkerMirroredStrategy configured by the
        ``TF_CONFIG`` environment variable, which is validated first.
        ``tpu``: TPUStrategy on the TPU named by ``tpu``.
      tpu: TPU name or ``grpc://host:port`` address, or ``"local"`` for a TPU
        VM; only used with ``name="tpu"``. ``None`` lets the resolver read
        ``TPU_NAME``.

    Returns:
      The strategy. Build models and compile them under ``strategy.scope()``.
      The same arguments return the same object for the life of the process
      (the stages of one job share it): a second MirroredStrategy restarts
      TensorFlow's collective keys, and its all-reduces clash with the first
      one's.

    Raises:
      ValueError: unknown ``name``, or a missing / invalid ``TF_CONFIG``, or
        no TPU could be found.
    """
    if name not in STRATEGY_NAMES:
        raise ValueError(
            f"Unknown strategy {name!r} (--strategy); choose one of "
            f"{', '.join(STRATEGY_NAMES)}.")
    if name == "auto" and _describes_cluster(os.environ.get("TF_CONFIG")):
        _log.warning(
            "TF_CONFIG describes a multi-worker cluster, but strategy "
            "'auto' trains on this process only; pass "
            "--strategy=multi_worker to train across the cluster.")
    if name == "multi_worker":
        parse_tf_config(os.environ.get("TF_CONFIG"))
    key = (name, tpu, os.environ.get("TF_CONFIG") if name == "multi_worker" else None)
    if key not in _BUILT:
        strategy = _new_strategy(name, tpu)
        if strategy is tf.distribute.get_strategy():
            return strategy  # the default strategy: nothing was built
        _BUILT[key] = strategy
    return _BUILT[key]


# The strategies this process built, by build_strategy's arguments.
_BUILT: dict = {}


def _new_strategy(name: str, tpu: str | None) -> tf.distribute.Strategy:
    if name == "auto":
        gpus = tf.config.list_physical_devices("GPU")
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_physical_devices("GPU")
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        # No GPU: mirror across the logical CPU devices, if the process split
        # its CPU into several (useful to exercise multi-replica code on CPU).
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus if len(cpus) > 1 else None)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return _build_tpu_strategy(tpu)


def parse_tf_config(raw: str | None) -> dict:
    """Validates the ``TF_CONFIG`` value of a multi-worker job.

    Args:
      raw: the environment variable's value (``None`` if unset).

    Returns:
      The parsed dict, with ``cluster`` and ``task`` checked.

    Raises:
      ValueError: naming ``TF_CONFIG``, what is wrong and an example value.
    """
    def fail(problem):
        return ValueError(
            f"--strategy=multi_worker needs the TF_CONFIG environment variable "
            f"describing the cluster and this task; {problem}. Example: "
            f"{_TF_CONFIG_EXAMPLE}")

    if not raw:
        raise fail("TF_CONFIG is not set")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise fail(f"TF_CONFIG is not valid JSON ({e}): {raw!r}") from None
    if not isinstance(config, dict):
        raise fail(f"TF_CONFIG must be a JSON object, got {raw!r}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise fail(f'TF_CONFIG has no "cluster" mapping: {raw!r}')
    for task_type, addresses in cluster.items():
        if (not isinstance(addresses, list) or not addresses or not all(
                isinstance(a, str) and ":" in a for a in addresses)):
            raise fail(f'TF_CONFIG cluster["{task_type}"] must be a non-empty '
                       f'list of "host:port" strings, got {addresses!r}')
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise fail(f'TF_CONFIG has no "task" with "type" and "index": {raw!r}')
    task_type, index = task["type"], task["index"]
    if task_type not in cluster:
        raise fail(f'TF_CONFIG task type {task_type!r} is not in the cluster '
                   f'({", ".join(cluster)})')
    if (not isinstance(index, int) or isinstance(index, bool) or
            not 0 <= index < len(cluster[task_type])):
        raise fail(f'TF_CONFIG task index {index!r} is out of range for '
                   f'{len(cluster[task_type])} "{task_type}" task(s)')
    return config


def _describes_cluster(raw: str | None) -> bool:
    try:
        cluster = json.loads(raw or "{}").get("cluster") or {}
        return sum(len(v) for v in cluster.values()) > 1
    except (ValueError, AttributeError, TypeError):
        return False


def _build_tpu_strategy(tpu: str | None) -> tf.distribute.Strategy:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise ValueError(
            f"--strategy=tpu could not connect to a TPU (tpu={tpu!r}): {e}. "
            "Pass --tpu=<TPU name, grpc://host:port, or 'local' on a TPU VM>, "
            "or choose another --strategy.") from e
    return tf.distribute.TPUStrategy(resolver)


# --------------------------------------------------------------------------
# Tasks, chief and artifacts


def is_multi_worker(strategy) -> bool:
    """True for a MultiWorkerMirroredStrategy that spans several workers."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    in_mode = getattr(strategy.extended, "_in_multi_worker_mode", None)
    if in_mode is not None:
        return bool(in_mode())
    resolver = strategy.cluster_resolver
    return bool(resolver and resolver.task_type)


def task_name(strategy) -> str | None:
    """Returns ``"<type>-<index>"`` of this task in a multi-worker job.

    Args:
      strategy: the job's strategy.

    Returns:
      E.g. ``"worker-1"``; ``None`` when the strategy is not multi-worker.
    """
    if not is_multi_worker(strategy):
        return None
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type}-{resolver.task_id}"


def is_chief(strategy) -> bool:
    """Whether this process writes the job's artifacts.

    Args:
      strategy: the job's strategy.

    Returns:
      True for the ``chief`` task, for ``worker`` 0 when the cluster has no
      chief, and for every strategy that is not multi-worker.
    """
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None or task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def any_worker(strategy, flag: bool) -> bool:
    """Whether ``flag`` is true on any worker: one all-reduce under multi-worker.

    Every worker of the job must call it at the same point; without a
    multi-worker strategy it returns ``flag``.
    """
    if strategy is None or not is_multi_worker(strategy):
        return bool(flag)

    @tf.function
    def total(value):
        per_replica = strategy.run(tf.identity, args=(value,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    with strategy.scope():
        return bool(total(tf.constant(1.0 if flag else 0.0)) > 0)


def artifact_dir(model_dir: str, strategy) -> str:
    """Returns where this process may write model files, logs and backups.

    Under multi-worker training every worker runs the same callbacks (saving
    can involve collective ops, so all of them must save), but only the chief
    may write into ``model_dir``; the others write into a private scratch
    directory ``model_dir/.worker-<type>-<index>`` that
    ``cleanup_artifact_dir`` removes.

    Args:
      model_dir: the job's output directory.
      strategy: the job's strategy.

    Returns:
      ``model_dir`` on the chief, the private directory (created) otherwise.
    """
    if is_chief(strategy):
        return model_dir
    path = os.path.join(model_dir, f".worker-{task_name(strategy)}")
    tf.io.gfile.makedirs(path)
    return path


def cleanup_artifact_dir(path: str, model_dir: str) -> None:
    """Removes a non-chief's private directory made by ``artifact_dir``.

    Does nothing when ``path`` is ``model_dir`` itself, so it is safe to call
    on every task.

    Args:
      path: what ``artifact_dir`` returned.
      model_dir: the job's output directory.

    Raises:
      ValueError: ``path`` is neither ``model_dir`` nor one of its
        ``.worker-*`` directories (refuses to delete anything else).
    """
    norm = os.path.normpath
    if norm(path) == norm(model_dir):
        return
    if (norm(os.path.dirname(norm(path))) != norm(model_dir) or
            not os.path.basename(norm(path)).startswith(".worker-")):
        raise ValueError(
            f"Refusing to delete {path!r}: it is not a worker scratch "
            f"directory of model_dir {model_dir!r}.")
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)


# --------------------------------------------------------------------------
# Batches and input sharding


def global_batch_check(batch_size: int, strategy) -> int:
    """Checks that the global batch splits evenly across the replicas.

    Args:
      batch_size: the GLOBAL batch size (``--batch_size``).
      strategy: the job's strategy.

    Returns:
      The per-replica batch size.

    Raises:
      ValueError: naming ``--batch_size`` and the replica count.
    """
    replicas = int(strategy.num_replicas_in_sync)
    if (isinstance(batch_size, bool) or not isinstance(batch_size, int) or
            batch_size < 1):
        raise ValueError(
            f"--batch_size={batch_size!r} must be a positive integer (the "
            f"global batch size, split across {replicas} replica(s)).")
    if batch_size % replicas:
        lower = replicas * max(1, batch_size // replicas)
        upper = replicas * (batch_size // replicas + 1)
        raise ValueError(
            f"--batch_size={batch_size} does not divide evenly across "
            f"{replicas} replicas; use a multiple of {replicas} (it is the "
            f"global batch size, e.g. {lower} or {upper}).")
    return batch_size // replicas


def steps_per_execution_check(steps: int, strategy) -> None:
    """Refuses several steps per execution over several replicas (not TPU).

    Keras 3 runs ``steps_per_execution > 1`` as a ``tf.while_loop`` whose
    ``tf.cond`` calls ``strategy.run``; under MirroredStrategy and
    MultiWorkerMirroredStrategy with more than one replica that graph fails
    in the first step (a placeholder is never fed), so the run is refused
    before anything is built.

    Args:
      steps: ``--steps_per_execution``.
      strategy: the job's strategy.

    Raises:
      ValueError: naming ``--steps_per_execution`` and the replica count.
    """
    replicas = int(strategy.num_replicas_in_sync)
    if steps == 1 or replicas == 1 or isinstance(strategy, tf.distribute.TPUStrategy):
        return
    raise ValueError(
        f"--steps_per_execution={steps} needs one replica: Keras cannot run several "
        f"steps per call under {type(strategy).__name__} with {replicas} replicas "
        f"(its multi-step loop fails in the first step). Use --steps_per_execution=1 "
        f"with this --strategy, or train on one device.")


_SOURCE_POLICIES = {
    # Image folders are one dataset built from a list of paths: every worker
    # reads the same list and keeps every n-th element.
    "folder": tf.data.experimental.AutoShardPolicy.DATA,
    # TFDS splits are read through their own file readers; sharding the
    # elements is always correct regardless of how many files a split has.
    "tfds": tf.data.experimental.AutoShardPolicy.DATA,
    # TFRecord shards: each worker reads whole files, which avoids every
    # worker reading (and dropping) all the data.
    "tfrecord": tf.data.experimental.AutoShardPolicy.FILE,
}


def shard_policy(source: str, num_files: int | None = None,
                 num_workers: int = 1) -> tf.data.experimental.AutoShardPolicy:
    """Chooses how a multi-worker job splits its input between workers.

    Args:
      source: ``"folder"``, ``"tfds"`` or ``"tfrecord"``.
      num_files: number of TFRecord files, if known.
      num_workers: number of workers in the job.

    Returns:
      ``DATA`` for folders and TFDS, ``FILE`` for TFRecords unless there are
      fewer files than workers (FILE sharding then fails), in which case
      ``DATA``.

    Raises:
      ValueError: unknown ``source``.
    """
    if source not in _SOURCE_POLICIES:
        raise ValueError(f"Unknown input source {source!r}; choose one of "
                         f"{', '.join(_SOURCE_POLICIES)}.")
    policy = _SOURCE_POLICIES[source]
    if (policy == tf.data.experimental.AutoShardPolicy.FILE and
            num_files is not None and num_files < num_workers):
        _log.warning("%d TFRecord file(s) for %d workers: sharding by "
                     "element instead of by file.", num_files, num_workers)
        policy = tf.data.experimental.AutoShardPolicy.DATA
    return policy


def with_shard_policy(dataset: tf.data.Dataset,
                      policy) -> tf.data.Dataset:
    """Returns ``dataset`` with an explicit auto-shard policy.

    The policy only matters when a multi-worker strategy distributes the
    dataset; it is harmless otherwise.

    Args:
      dataset: any ``tf.data.Dataset``.
      policy: a ``tf.data.experimental.AutoShardPolicy`` or its name
        (``"DATA"``, ``"FILE"``, ``"AUTO"``, ``"OFF"``, ``"HINT"``).

    Returns:
      The same pipeline with ``experimental_distribute.auto_shard_policy`` set.
    """
    if isinstance(policy, str):
        try:
            policy = tf.data.experimental.AutoShardPolicy[policy.upper()]
        except KeyError:
            names = [p.name for p in tf.data.experimental.AutoShardPolicy]
            raise ValueError(f"Unknown shard policy {policy!r}; choose one of "
                             f"{', '.join(names)}.") from None
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return dataset.with_options(options)
