"""Input-pipeline benchmark: catdog against the stock Keras loaders, side by side.

One run times, on the same folder and the same CPU:

- ``ImageDataGenerator.flow_from_directory`` (rescale only; with ``augment``
  also flip/rotation 35/zoom 0.2), from ``tf_keras`` or
  ``keras.src.legacy.preprocessing.image`` when importable;
- ``keras.utils.image_dataset_from_directory`` with its defaults, and with
  ``.cache().prefetch()`` (first and second epoch; its cache is float32);
- catdog's pipeline (:func:`catdog.data.build_dataset`, training mode):
  the one-off file check, the first epoch (read, decode, resize, cache) and
  a cached epoch; also the first epoch with ``dct_scaling``, and with
  EXIF orientation off (stock Keras applies none);
- with ``shards_at_size``, catdog from TFRecord shards of the same folder
  stored at the image size (JPEG and raw), built in the run (the build
  timed apart): first epoch, against stock Keras from the folder;
- the decode ceiling: parallel decode + resize of bytes already in memory
  (no file reads), and decode alone.

Only ratios measured in one run mean anything on a shared machine; the
result records the load average before and after. Before anything is
timed every file is read once, so the OS page cache holds all of them and no
loader pays disk reads another one does not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time

import numpy as np

from catdog import decode
from catdog import scan
from benchmarks.input_loaders import (
    build_shards_at_size, cache_element_bytes, loadavg, local_data_service, machine, rate, ratio, sample_folder,
    symlink_folder, time_augmentation, time_catdog, time_catdog_service,
    time_catdog_tfrecords, time_decode_ceiling, time_idg, time_keras, time_memcpy,
    warm_page_cache)
from benchmarks import input_model
from benchmarks.input_memory import check_memory

RESULT_KEYS = ("images", "idg_img_per_s", "keras_img_per_s", "keras_cached_img_per_s",
               "catdog_first_epoch_img_per_s", "catdog_cached_epoch_img_per_s",
               "decode_ceiling_img_per_s", "catdog_cache_bytes", "ratio_vs_keras",
               "ratio_vs_ceiling", "ratio_cached_vs_first")


def run_benchmark(data_dir: str, image_size=(224, 224), batch_size: int = 32,
                  augment: bool = False, max_images: int = 0, repeats: int = 3,
                  log=print, train_tfrecords: str = "", model_dir: str = "",
                  model_steps: int = 10, service_workers=(),
                  shards_at_size: bool = False, shards_jpeg_quality=None,
                  shards_jpeg_chroma: str = "auto") -> dict:
    """Times every loader on ``data_dir`` and returns the figures.

    Loaders are timed round-robin ``repeats`` times and each figure is the
    best round: load from other processes only ever slows a loader down, and
    interleaving spreads it over all of them. Every round's figure is kept
    under ``"rounds"``.

    Args:
      data_dir: folder with one subfolder per class.
      image_size: ``(height, width)``.
      batch_size: batch size of every loader.
      augment: also time ImageDataGenerator with flip/rotation/zoom and
        catdog's augmentation block (once).
      max_images: when > 0, use at most this many files (balanced).
      repeats: rounds of timing (>= 1).
      log: called with one line per measurement (progress).
      train_tfrecords: also time catdog reading these TFRecord shards (a
        glob, as for training), e.g. written from ``data_dir`` by
        ``build_tfrecords.py``; timed in every round like the other loaders.
      model_dir: a finished training run: also time its model's training
        step on batches of the same shape and say whether the input or the
        model limits training. ``image_size`` / ``batch_size`` None take the
        run's.
      model_steps: timed training steps of the model (>= 1).
      service_workers: also time one epoch of catdog through a local
        tf.data service with each of these numbers of in-process workers
        (e.g. ``(1, 2)``), in every round.
      shards_at_size: also build TFRecord shards of the folder stored at
        ``image_size`` (as ``build_tfrecords.py --image_size``; JPEG and
        ``--raw``) in a temporary folder, the build timed apart, and time
        catdog's first epoch from them in every round.
      shards_jpeg_quality: JPEG quality of those shards (1-100; None: the
        writer's default at a size).
      shards_jpeg_chroma: their colour resolution, ``"auto"``, ``"444"`` or
        ``"420"`` (``build_tfrecords.py --jpeg_chroma``).

    Returns:
      A dict with at least :data:`RESULT_KEYS`; rates are images per second,
      ratios are computed from the rates in the same dict.
    """
    run = None
    if model_dir:  # a wrong model_dir fails here, before anything is timed
        if model_steps < 1:
            raise ValueError(f"`--model_steps` must be >= 1. Received: model_steps={model_steps}")
        model, config = input_model.load_run(model_dir)
        image_size, batch_size = input_model.run_shape(model, config, image_size, batch_size)
        run = (model, config)
    image_size = tuple(int(s) for s in image_size or (224, 224))
    batch_size = 32 if batch_size is None else batch_size
    if not os.path.isdir(data_dir):
        raise ValueError(f"`--data_dir` must be a folder of class subfolders. "
                         f"Received: data_dir={data_dir!r}")
    if batch_size < 1:
        raise ValueError(f"`--batch_size` must be >= 1. Received: batch_size={batch_size}")
    if repeats < 1:
        raise ValueError(f"`--repeats` must be >= 1. Received: repeats={repeats}")
    if max_images < 0:
        raise ValueError(f"`--max_images` must be >= 0. Received: max_images={max_images}")
    if shards_jpeg_quality is not None and not 1 <= shards_jpeg_quality <= 100:
        raise ValueError("`--shards_jpeg_quality` must be in 1..100. Received: "
                         f"shards_jpeg_quality={shards_jpeg_quality}")
    service_workers = tuple(service_workers or ())
    if any(isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= 16
           for w in service_workers):
        raise ValueError("`--data_service_workers` must be numbers of workers between 1 "
                         f"and 16. Received: data_service_workers={list(service_workers)}")
    shards = None
    if train_tfrecords:  # a wrong glob fails here, before anything is timed
        from catdog.sources import tfrecords  # pylint: disable=import-outside-toplevel
        shards = tfrecords.resolve_shards(train_tfrecords, "train_tfrecords")
    listing = scan.list_image_files(data_dir)
    count = len(listing[0])
    check_memory(min(count, max_images) if max_images else count, image_size)
    workdir = tempfile.mkdtemp(prefix="catdog-bench-")
    try:
        if max_images:
            data_dir = sample_folder(listing, max_images, workdir)
            listing = scan.list_image_files(data_dir)
        with contextlib.ExitStack() as stack:
            services = {w: stack.enter_context(local_data_service(w))
                        for w in service_workers}
            result = _run(data_dir, listing, image_size, batch_size, augment, repeats, log,
                          shards, workdir, services, sampled=bool(max_images),
                          at_size=((shards_jpeg_quality, shards_jpeg_chroma)
                                   if shards_at_size else None))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # only our own symlinks
    if run is not None:
        result.update(model_dir=model_dir, model_stage=run[1].get("stage"),
                      **input_model.time_train_step(*run, image_size, batch_size,
                                                    steps=model_steps))
        result.update(input_model.bottleneck(result["catdog_first_epoch_img_per_s"],
                                             result["model_train_img_per_s"],
                                             result["catdog_cached_epoch_img_per_s"]))
        log(result["bottleneck_verdict"])
    return result


def _shards_at_size(data_dir, image_size, batch_size, jpeg, workdir, sampled, result,
                    log) -> list:
    """Builds the folder's shards at ``image_size`` (JPEG, raw); returns their loaders."""
    quality, chroma = jpeg
    loaders = []
    for kind, raw in (("jpeg", False), ("raw", True)):
        built = build_shards_at_size(
            data_dir, os.path.join(workdir, f"shards-{kind}"), image_size, raw, quality,
            jpeg_chroma=chroma, check_cache=os.path.join(workdir, "check-cache") if sampled else "")
        manifest = built["manifest"]
        if not raw:  # what the defaults chose at this size
            quality, chroma = manifest["jpeg_quality"], manifest["jpeg_chroma"]
        result.update({f"shards_{kind}_build_seconds": built["seconds"],
                       f"shards_{kind}_bytes": built["bytes"],
                       f"shards_{kind}_files": len(built["files"]),
                       f"shards_{kind}_examples": manifest["num_examples"]})
        stored = _shard_kind(kind, quality, chroma)
        log(f"shards at {image_size[0]}x{image_size[1]} ({stored}): "
            f"built in {built['seconds']} s (not in any epoch), "
            f"{built['bytes'] / 2**20:.1f} MB in {len(built['files'])} file(s)")
        loaders.append(lambda files=built["files"], m=manifest, k=kind: time_catdog_tfrecords(
            files, len(m["class_names"]), m["num_examples"], image_size, batch_size,
            key=f"catdog_shards_{k}"))
    result["shards_jpeg_quality"] = quality
    result["shards_jpeg_chroma"] = chroma
    return loaders


def _kind_of(r: dict, kind: str) -> str:
    return _shard_kind(kind, r["shards_jpeg_quality"], r.get("shards_jpeg_chroma"))


def _shard_kind(kind: str, quality, chroma="444") -> str:
    if kind != "jpeg":
        return "raw uint8"
    return f"JPEG q{quality}" + (" 4:2:0" if chroma == "420" else "")


def _run(data_dir, listing, image_size, batch_size, augment, repeats, log,
         shards, workdir, services, sampled=False, at_size=None) -> dict:
    result = {"data_dir": data_dir, "image_size": list(image_size),
              "batch_size": batch_size, "repeats": repeats, "machine": machine(),
              "loadavg_start": loadavg()}
    paths, labels, class_names = listing
    start = time.perf_counter()
    total = warm_page_cache(paths)
    result.update(images=len(paths), files_checked=len(paths), bytes_on_disk=total,
                  page_cache_warm_seconds=round(time.perf_counter() - start, 3),
                  class_names=class_names)
    log(f"{len(paths)} images, {total / 2**20:.1f} MB, page cache warmed "
        "(every loader reads from memory)")

    # The one-off file check catdog does before training, timed on its own.
    start = time.perf_counter()
    # The check results of a sample (temporary symlinks) go to a cache of
    # its own, deleted with it, not into the user's check cache.
    checks = scan.check_files(
        paths, cache_dir=os.path.join(workdir, "check-cache") if sampled else None)
    result["catdog_scan_seconds"] = round(time.perf_counter() - start, 3)
    good = [(c.path, l) for c, l in zip(checks, labels) if c.ok]
    result["catdog_skipped_files"] = len(paths) - len(good)
    gpaths, glabels = [g[0] for g in good], [g[1] for g in good]
    log(f"catdog file check {result['catdog_scan_seconds']} s")
    if len(good) < len(paths):
        # Stock Keras and ImageDataGenerator stop at the first file they
        # cannot decode, so every loader times the same usable files, through
        # a folder of symlinks (the user's folder is never touched).
        result["skipped_files"] = [{"path": c.path, "reason": c.reason}
                                   for c in checks if not c.ok]
        data_dir = symlink_folder(good, class_names, os.path.join(workdir, "usable"))
        paths = gpaths
        result["images"] = len(gpaths)
        log(f"{result['catdog_skipped_files']} unusable file(s) left out of every "
            "loader (stock Keras would stop at the first one); listed under "
            "'skipped_files' in the JSON")

    def catdog_round():
        r = time_catdog(gpaths, glabels, image_size, batch_size)
        return {"catdog_first_epoch_img_per_s": r["first_epoch_img_per_s"],
                "catdog_first_epoch_img_per_cpu_s": r["first_epoch_img_per_cpu_s"],
                "catdog_cached_epoch_img_per_s": r["cached_epoch_img_per_s"],
                "catdog_first_epoch_tail_s": r["first_epoch_tail_s"],
                "catdog_first_epoch_kernel_us_per_img": r["first_epoch_kernel_us_per_img"],
                "catdog_first_epoch_faults_per_img": r["first_epoch_faults_per_img"],
                "catdog_cache_rss_delta_bytes": r["rss_delta_bytes"]}

    def idg_round():
        rate, source, cpu_rate = time_idg(data_dir, image_size, batch_size)
        result["idg_source"] = source
        return {"idg_img_per_s": rate, "idg_img_per_cpu_s": cpu_rate}

    def dct_round():
        r = time_catdog(gpaths, glabels, image_size, batch_size, dct_scaling=True,
                        epochs=1)
        return {"catdog_dct_first_epoch_img_per_s": r["first_epoch_img_per_s"],
                "catdog_dct_first_epoch_img_per_cpu_s": r["first_epoch_img_per_cpu_s"]}

    keras_round = lambda: time_keras(data_dir, image_size, batch_size)

    def side_by_side():
        # catdog's first epoch and stock Keras back to back, in turn first,
        # so drifting load falls on both alike; each round gives one ratio.
        first = len(rounds) % 2 == 0
        figures = (catdog_round() if first else keras_round())
        figures.update(keras_round() if first else catdog_round())
        return figures

    def no_exif_round():
        # Stock Keras applies no EXIF orientation: this row says what catdog's
        # default EXIF step costs against it.
        r = time_catdog(gpaths, glabels, image_size, batch_size, epochs=1,
                        decode_options=decode.DecodeOptions(exif_orientation=False))
        return {"catdog_no_exif_first_epoch_img_per_s": r["first_epoch_img_per_s"],
                "catdog_no_exif_first_epoch_img_per_cpu_s": r["first_epoch_img_per_cpu_s"]}

    loaders = [
        lambda: time_decode_ceiling(paths, image_size, batch_size),
        side_by_side,
        no_exif_round,
        idg_round,
        dct_round,
        lambda: {"memcpy_img_per_s": time_memcpy(len(gpaths), image_size)},
    ]
    if shards:
        files, manifest, examples = shards
        warm_page_cache(files)
        result.update(tfrecords_shards=len(files), tfrecords_examples=examples)
        loaders.append(lambda: time_catdog_tfrecords(
            files, len(manifest["class_names"]), examples, image_size, batch_size))
    if at_size:
        loaders += _shards_at_size(data_dir, image_size, batch_size, at_size, workdir,
                                   sampled, result, log)
    for workers, service in services.items():
        loaders.append(lambda w=workers, a=service: time_catdog_service(
            gpaths, glabels, image_size, batch_size, a, w))
    rounds = []
    for i in range(repeats):
        figures = {}
        for loader in loaders:
            figures.update(loader())
        rounds.append(figures)
        log(f"round {i + 1}/{repeats}: " + ", ".join(
            f"{k.replace('_img_per_s', '')} {v:,.0f}" for k, v in figures.items()
            if k.endswith("_img_per_s") and v is not None))
    result["rounds"] = rounds
    for key in rounds[0]:
        values = [r[key] for r in rounds if r[key] is not None]
        # Rates: the best round. Bytes: the largest (the most conservative).
        result[key] = max(values) if values else None
    result["catdog_cache_bytes"] = cache_element_bytes(len(gpaths), image_size)
    first_epoch_images = (len(gpaths) // batch_size) * batch_size
    result["catdog_first_epoch_with_scan_img_per_s"] = rate(
        first_epoch_images, result["catdog_scan_seconds"]
        + first_epoch_images / result["catdog_first_epoch_img_per_s"])

    if augment:
        result["idg_augment_img_per_s"], _, _ = time_idg(data_dir, image_size,
                                                         batch_size, augment=True)
        result["catdog_augment_img_per_s"] = time_augmentation(gpaths, glabels,
                                                               image_size, batch_size)
        log(f"augmentation: ImageDataGenerator {result['idg_augment_img_per_s']} img/s, "
            f"catdog block {result['catdog_augment_img_per_s']} img/s")

    n_hw3 = len(gpaths) * image_size[0] * image_size[1] * 3
    result.update(
        cache_nhw3_bytes=n_hw3,
        ratio_vs_keras=ratio(result["catdog_first_epoch_img_per_s"],
                             result["keras_img_per_s"]),
        ratio_vs_ceiling=ratio(result["catdog_first_epoch_img_per_s"],
                               result["decode_ceiling_img_per_s"]),
        # What target 1 asks is only possible if the ceiling itself is well
        # above stock Keras: this says how far above it is on this machine.
        ratio_ceiling_vs_keras=ratio(result["decode_ceiling_img_per_s"],
                                     result["keras_img_per_s"]),
        ratio_ceiling_vs_keras_cpu=ratio(result["decode_ceiling_img_per_cpu_s"],
                                         result["keras_img_per_cpu_s"]),
        ratio_floor_vs_keras_cpu=ratio(result["entropy_floor_img_per_cpu_s"],
                                       result["keras_img_per_cpu_s"]),
        ratio_cached_vs_first=ratio(result["catdog_cached_epoch_img_per_s"],
                                    result["catdog_first_epoch_img_per_s"]),
        ratio_dct_vs_keras=ratio(result["catdog_dct_first_epoch_img_per_s"],
                                 result["keras_img_per_s"]),
        ratio_dct_vs_ceiling=ratio(result["catdog_dct_first_epoch_img_per_s"],
                                   result["decode_ceiling_img_per_s"]),
        ratio_cached_vs_memcpy=ratio(result["catdog_cached_epoch_img_per_s"],
                                     result["memcpy_img_per_s"]),
        ratio_vs_keras_cpu=ratio(result["catdog_first_epoch_img_per_cpu_s"],
                                 result["keras_img_per_cpu_s"]),
        ratio_vs_ceiling_cpu=ratio(result["catdog_first_epoch_img_per_cpu_s"],
                                   result["decode_ceiling_img_per_cpu_s"]),
        ratio_dct_vs_keras_cpu=ratio(result["catdog_dct_first_epoch_img_per_cpu_s"],
                                     result["keras_img_per_cpu_s"]),
        **{f"ratio_shards_{kind}_vs_keras{cpu}": ratio(
            result[f"catdog_shards_{kind}_first_epoch{rate_key}"],
            result[f"keras{rate_key}"])
           for kind in ("jpeg", "raw") if at_size
           for cpu, rate_key in (("", "_img_per_s"), ("_cpu", "_img_per_cpu_s"))},
        ratio_no_exif_vs_keras=ratio(result["catdog_no_exif_first_epoch_img_per_s"],
                                     result["keras_img_per_s"]),
        ratio_no_exif_vs_keras_cpu=ratio(result["catdog_no_exif_first_epoch_img_per_cpu_s"],
                                         result["keras_img_per_cpu_s"]),
        cache_bytes_vs_nhw3=ratio(result["catdog_cache_bytes"], n_hw3),
        cache_rss_vs_nhw3=ratio(result["catdog_cache_rss_delta_bytes"], n_hw3),
        loadavg_end=loadavg())
    for suffix, per in (("", "_img_per_s"), ("_cpu", "_img_per_cpu_s")):
        per_round = [ratio(x["catdog_first_epoch" + per], x["keras" + per]) for x in rounds]
        result[f"ratio_vs_keras{suffix}_rounds"] = per_round
        known = [x for x in per_round if x is not None]
        result[f"ratio_vs_keras{suffix}_median"] = (
            round(float(np.median(known)), 3) if known else None)
    for who in ("keras", "catdog_first_epoch"):
        # How long each epoch went on after its last batch (see catdog.tfdata).
        tails = [x[f"{who}_tail_s"] for x in rounds if x.get(f"{who}_tail_s") is not None]
        result[f"{who}_tail_median_s"] = round(float(np.median(tails)), 3) if tails else None
        result[f"{who}_tail_rounds_over_50ms"] = sum(t > 0.05 for t in tails)
        # Kernel time and page faults: what filling a memory cache costs
        # (fresh memory for every cached image), which a loader without one
        # does not pay.
        for figure in ("kernel_us_per_img", "faults_per_img"):
            known = [x[f"{who}_{figure}"] for x in rounds
                     if x.get(f"{who}_{figure}") is not None]
            result[f"{who}_{figure}_median"] = (
                round(float(np.median(known)), 2) if known else None)
    log(headline(result))
    if result["keras_kernel_us_per_img_median"] is not None:
        log(kernel_line(result))
    return result


def headline(r: dict) -> str:
    """The one line that answers "is catdog's first epoch as fast as stock Keras?".

    Ratios of the rounds in which both ran back to back: the median and the
    spread, in wall time and per CPU-second (the steadier one on a shared
    machine), then the ratio of the best rounds.
    """
    def spread(key):
        known = [x for x in r[key] if x is not None]
        return f"{min(known)}-{max(known)}" if known else "unavailable"

    return ("catdog first epoch / stock Keras image_dataset_from_directory, side by "
            f"side: wall {r['ratio_vs_keras_median']}x (median of {len(r['ratio_vs_keras_rounds'])} "
            f"rounds, {spread('ratio_vs_keras_rounds')}), per CPU-second "
            f"{r['ratio_vs_keras_cpu_median']}x (median, {spread('ratio_vs_keras_cpu_rounds')}); "
            f"best rounds: wall {r['ratio_vs_keras']}x, per CPU-second {r['ratio_vs_keras_cpu']}x"
            + _tails(r))


def kernel_line(r: dict) -> str:
    """Where the first epochs' kernel time went, per image (medians of the rounds)."""
    return ("kernel time per image, first epoch (median of the rounds): stock Keras "
            f"{r['keras_kernel_us_per_img_median']} us with "
            f"{r['keras_faults_per_img_median']} page faults; catdog "
            f"{r['catdog_first_epoch_kernel_us_per_img_median']} us with "
            f"{r['catdog_first_epoch_faults_per_img_median']} page faults (its memory "
            "cache takes fresh memory for every image; stock's defaults cache nothing)")


def _tails(r: dict) -> str:
    """The wait after each epoch's last batch: stock's autotuned pipeline
    waits for tf.data's model thread at random, catdog's does not."""
    if r.get("keras_tail_median_s") is None:
        return ""
    rounds = len(r["ratio_vs_keras_rounds"])
    return ("; epoch end after the last batch (median; rounds over 50 ms): stock "
            f"{r['keras_tail_median_s']} s ({r['keras_tail_rounds_over_50ms']}/{rounds}), "
            f"catdog {r['catdog_first_epoch_tail_median_s']} s "
            f"({r['catdog_first_epoch_tail_rounds_over_50ms']}/{rounds})")


def format_table(r: dict) -> str:
    """A Markdown table of a :func:`run_benchmark` result."""
    fmt = lambda v: "unavailable" if v is None else f"{v:,.0f}"
    rows = [
        ("ImageDataGenerator.flow_from_directory, rescale only "
         f"({r.get('idg_source')})", "idg_img_per_s"),
        ("image_dataset_from_directory (defaults)", "keras_img_per_s"),
        ("image_dataset_from_directory + cache + prefetch, 1st epoch",
         "keras_cached_first_epoch_img_per_s"),
        ("image_dataset_from_directory + cache + prefetch, 2nd epoch",
         "keras_cached_img_per_s"),
        ("catdog, first epoch (read, decode, resize, cache)",
         "catdog_first_epoch_img_per_s"),
        ("catdog, first epoch incl. the one-off file check",
         "catdog_first_epoch_with_scan_img_per_s"),
        ("catdog, cached epoch", "catdog_cached_epoch_img_per_s"),
        ("catdog --dct_scaling, first epoch", "catdog_dct_first_epoch_img_per_s"),
        ("catdog --exif_orientation=false, first epoch",
         "catdog_no_exif_first_epoch_img_per_s"),
        ("decode ceiling: parallel decode + resize of in-memory bytes",
         "decode_ceiling_img_per_s"),
        ("decode alone (in-memory bytes)", "decode_only_img_per_s"),
        ("JPEG entropy-decoding floor (decode at 1/8 scale, in-memory bytes)",
         "entropy_floor_img_per_s"),
        ("memory copy of N uint8 images (cached-epoch limit)", "memcpy_img_per_s"),
    ]
    if "catdog_tfrecords_first_epoch_img_per_s" in r:
        rows += [(f"catdog from {r['tfrecords_shards']} TFRecord shards "
                  f"({r['tfrecords_examples']} examples), first epoch",
                  "catdog_tfrecords_first_epoch_img_per_s"),
                 ("catdog from TFRecord shards, cached epoch",
                  "catdog_tfrecords_cached_epoch_img_per_s")]
    at = f"{r['image_size'][0]}x{r['image_size'][1]}"
    for kind in ("jpeg", "raw"):
        if f"catdog_shards_{kind}_first_epoch_img_per_s" in r:
            rows.append((f"catdog from shards at {at} "
                         f"({_kind_of(r, kind)}), first epoch",
                         f"catdog_shards_{kind}_first_epoch_img_per_s"))
    if "model_train_img_per_s" in r:
        rows += [(f"model of {r['model_dir']} ({r['model_stage']}): training step on "
                  f"in-memory batches, {r['model_device']}", "model_train_img_per_s")]
    for workers in sorted(int(k.split("_")[2][:-1]) for k in r
                          if k.startswith("catdog_service_") and k.endswith("w_img_per_s")):
        rows.append((f"catdog through a local tf.data service, {workers} in-process "
                     f"worker{'s' if workers > 1 else ''}, epoch",
                     f"catdog_service_{workers}w_img_per_s"))
    if "idg_augment_img_per_s" in r:
        rows += [("ImageDataGenerator + flip/rotation 35/zoom 0.2", "idg_augment_img_per_s"),
                 ("catdog augmentation block (flip/rotation 0.1/zoom 0.2) on cached "
                  "images, same CPU", "catdog_augment_img_per_s")]
    lines = [f"{r['images']} images, {r['image_size'][0]}x{r['image_size'][1]}, batch "
             f"{r['batch_size']}; page cache warmed before timing; best of "
             f"{r['repeats']} interleaved rounds; "
             f"{r['machine']['cores']} cores ({r['machine']['cpu']}); load average "
             f"{r['loadavg_start']} -> {r['loadavg_end']}", "",
             "| loader | images/s | images per CPU-second |", "|---|---:|---:|"]
    for name, key in rows:
        per_cpu = r.get(key.replace("_img_per_s", "_img_per_cpu_s"))
        lines.append(f"| {name} | {fmt(r[key])} | {fmt(per_cpu) if per_cpu else ''} |")
    mb = lambda b: f"{b / 2**20:,.1f} MB"
    lines += [
        "",
        f"- {headline(r)}",
        f"- catdog / stock Keras, first epoch: {r['ratio_vs_keras']}x "
        f"(--dct_scaling: {r['ratio_dct_vs_keras']}x; --exif_orientation=false: "
        f"{r['ratio_no_exif_vs_keras']}x); per CPU-second "
        f"{r['ratio_vs_keras_cpu']}x (--dct_scaling: {r['ratio_dct_vs_keras_cpu']}x; "
        f"--exif_orientation=false: {r['ratio_no_exif_vs_keras_cpu']}x; stock Keras "
        "applies no EXIF orientation)",
        f"- catdog / decode ceiling, first epoch: {r['ratio_vs_ceiling']}x "
        f"(--dct_scaling: {r['ratio_dct_vs_ceiling']}x); per CPU-second "
        f"{r['ratio_vs_ceiling_cpu']}x",
        f"- decode ceiling / stock Keras: {r['ratio_ceiling_vs_keras']}x "
        f"(per CPU-second {r['ratio_ceiling_vs_keras_cpu']}x); entropy floor / stock "
        f"Keras per CPU-second: {r['ratio_floor_vs_keras_cpu']}x. A loader that decodes "
        "every image at full scale cannot beat the ceiling; where the ceiling is "
        "below 1.5x stock Keras, no such loader reaches 1.5x stock on this machine",
        f"- catdog cached / first epoch: {r['ratio_cached_vs_first']}x "
        f"(cached / memory copy: {r['ratio_cached_vs_memcpy']}x)",
        f"- one-off file check: {r['catdog_scan_seconds']} s for "
        f"{r['files_checked']} files"
        + (f"; {r['catdog_skipped_files']} unusable, left out of every loader"
           if r["catdog_skipped_files"] else ""),
        f"- catdog cache: {mb(r['catdog_cache_bytes'])} of uint8 elements = "
        f"{r['cache_bytes_vs_nhw3']} x N*H*W*3; process RSS grew "
        f"{mb(r['catdog_cache_rss_delta_bytes'])} ({r['cache_rss_vs_nhw3']} x) over the "
        f"first epoch; stock Keras cache (float32): {mb(r['keras_cache_bytes'])}",
    ]
    for kind in ("jpeg", "raw"):
        if f"ratio_shards_{kind}_vs_keras" in r:
            lines.append(
                f"- catdog from shards at {at} ({_kind_of(r, kind)}) "
                f"/ stock Keras from the folder, first epoch: "
                f"{r[f'ratio_shards_{kind}_vs_keras']}x wall, "
                f"{r[f'ratio_shards_{kind}_vs_keras_cpu']}x per CPU-second (shards built "
                f"once in {r[f'shards_{kind}_build_seconds']} s, "
                f"{mb(r[f'shards_{kind}_bytes'])}; not in the epoch)")
    if "bottleneck_verdict" in r:
        lines.append(f"- {r['bottleneck_verdict']}")
    return "\n".join(lines)

