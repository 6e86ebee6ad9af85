"""The main job: the four stages in order, then a comparison of them.

:func:`run_pipeline` trains ``baseline``, ``augmented``, ``feature_extraction``
and ``fine_tuning`` into subfolders of one model dir (fine-tuning starts from
the feature-extraction run) and writes ``comparison.md``, ``comparison.json``
and ``comparison.png`` (learning curves of every stage overlaid). The stage
whose saved model has the highest validation accuracy is marked in all three
and named as the model to export, so a fine-tuning that made things worse
never goes unnoticed.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Optional

from absl import logging

from catdog import config as config_lib
from catdog import fileio
from catdog import models
from catdog import figures
from catdog import rundir
from catdog import train

COMPARISON_MD = "comparison.md"
COMPARISON_JSON = "comparison.json"
COMPARISON_PNG = "comparison.png"
#: The job's file cache of decoded images, under its model dir.
CACHE_DIR = "cache"


def stage_config(base: config_lib.Config, stage: str, model_dir: str,
                 epochs: dict = None, learning_rates: dict = None,
                 augment: Optional[bool] = None,
                 settings: Optional[dict] = None,
                 job_cache: Optional[str] = None) -> config_lib.Config:
    """The config of one stage: the stage preset with ``base``'s data and model settings.

    Args:
      base: settings shared by every stage (data, backbone, strategy, ...).
      stage: stage name.
      model_dir: the pipeline's folder; the stage writes to ``model_dir/stage``.
      epochs: optional ``{stage: epochs}`` overrides (else the preset's).
      learning_rates: optional ``{stage: rate}`` overrides (else the preset's).
      augment: augmentation on or off for every stage that builds its model
        (``None``: each stage's preset); fine_tuning keeps its
        ``init_from`` model's block.
      settings: ``{setting: value}`` the user gave for every stage, among
        :data:`catdog.config.PRESET_SETTINGS` (the others are each stage's
        preset's; ``epochs`` and ``learning_rates`` come first).
      job_cache: the job's file cache (:func:`job_cache_dir`): the stage
        caches there instead of in memory, shuffling the whole split every
        epoch as a memory cache does; None keeps ``base``'s cache.
    """
    unknown = sorted(set(settings or {}) - set(config_lib.PRESET_SETTINGS))
    if unknown:
        raise ValueError(f"settings {unknown} are not chosen by the stage presets; "
                         f"expected some of {config_lib.PRESET_SETTINGS}")
    preset = config_lib.for_stage(stage)
    config = copy.deepcopy(base)
    config.model.stage = stage
    config.model.augment = preset.model.augment if augment is None else bool(augment)
    for field in config_lib.PRESET_SETTINGS:
        value = (settings or {}).get(field, config_lib.preset_value(preset, field))
        setattr(getattr(config, config_lib.preset_section(field)), field, value)
    config.train.epochs = (epochs or {}).get(stage, config.train.epochs)
    config.train.learning_rate = (learning_rates or {}).get(
        stage, config.train.learning_rate)
    config.train.model_dir = os.path.join(model_dir, stage)
    config.model.init_from = (os.path.join(model_dir, "feature_extraction")
                              if stage == "fine_tuning" else "")
    if job_cache:
        config.data.cache = job_cache
        config.data.whole_split_shuffle = True
    return config


def job_cache_dir(base: config_lib.Config, model_dir: str) -> Optional[str]:
    """Where the stages of a job share their decoded images, or None.

    With ``--cache=memory`` every stage would decode the whole data set again
    into its own memory cache; instead the job caches once in files under
    ``model_dir/cache``, keyed like any ``--cache`` folder (files, labels,
    image size, decode options), so every stage after the first reads it.
    None for another cache (``none`` or a folder: kept as given) and for a
    model dir that is not on a local disk (file caches there are not locked
    against killed runs).
    """
    if base.data.cache != "memory" or fileio.is_remote(model_dir):
        return None
    return os.path.join(model_dir, CACHE_DIR)


def _cache_record(folder: Optional[str]) -> Optional[dict]:
    # Every file in the folder, caches of earlier data and settings included.
    if not folder:
        return None
    size = 0
    if os.path.isdir(folder):
        size = sum(e.stat().st_size for e in os.scandir(folder) if e.is_file())
    return {"dir": folder, "bytes": size}


def run_pipeline(base: config_lib.Config, model_dir: str,
                 stages=config_lib.STAGES, epochs: dict = None,
                 learning_rates: dict = None,
                 fallback_to_random_weights: bool = False,
                 augment: Optional[bool] = None,
                 settings: Optional[dict] = None, share_cache: bool = True) -> dict:
    """Trains the stages in order and writes the comparison.

    Args:
      base: shared settings; stage, epochs, learning rate and model dir are
        set per stage.
      model_dir: each stage writes into ``model_dir/<stage>``.
      stages: which stages to run, in order. ``fine_tuning`` needs
        ``feature_extraction`` (run now or earlier into the same model dir).
      epochs: ``{stage: epochs}`` overrides.
      learning_rates: ``{stage: learning rate}`` overrides.
      augment: augmentation on or off for stages 1-3 (``None``: their presets).
      settings: preset settings the user gave for every stage (see
        :func:`stage_config`).
      fallback_to_random_weights: when ImageNet weights cannot be obtained,
        say so and train the backbone stages from random initialisation
        (the demo does this); otherwise that is an error.
      share_cache: with ``base.data.cache == "memory"``, decode once for the
        job: the stages share one file cache under ``model_dir/cache``
        (:func:`job_cache_dir`). False: a memory cache per stage (scripts
        pass False when ``--cache=memory`` is given explicitly).

    Returns:
      The comparison: ``{"stages": [per-stage summary], ...}``.
    """
    unknown = [s for s in stages if s not in config_lib.STAGES]
    if unknown:
        raise ValueError(f"`--stages` must be among {config_lib.STAGES}. "
                         f"Received: stages={list(stages)}")
    backbone_stages = [s for s in stages if s in ("feature_extraction", "fine_tuning")]
    if base.data.color_mode != "rgb" and backbone_stages:
        # Refused before the first stage trains, not after it.
        raise ValueError(
            f"--color_mode={base.data.color_mode} cannot be used with the "
            f"{', '.join(backbone_stages)} stage(s): their pretrained --backbone takes "
            "3-channel images. Run --stages=baseline,augmented, or use --color_mode=rgb.")
    config_lib.check_writes_outside_data(base.data, model_dir)
    os.makedirs(model_dir, exist_ok=True)
    cache_dir = job_cache_dir(base, model_dir) if share_cache else None
    if cache_dir:
        logging.info("The stages share one file cache of the decoded images: %s "
                     "(decoded once for the job; --cache=memory decodes per stage).",
                     cache_dir)
    start = time.time()
    rows, histories = [], {}
    weights_note = ""
    for stage in stages:
        config = stage_config(base, stage, model_dir, epochs, learning_rates, augment,
                              settings, job_cache=cache_dir)
        logging.info("=== stage %s -> %s", stage, config.train.model_dir)
        note = weights_note if stage in ("feature_extraction", "fine_tuning") else ""
        try:
            result = train.run(config, weights_note=note)
        except models.WeightsError as e:
            # Raised before any training, when the backbone is built.
            if not fallback_to_random_weights or stage != "feature_extraction":
                raise
            weights_note = note = ("random initialisation: ImageNet weights "
                                   f"unavailable ({e})")
            logging.warning("%s\nThe demo carries on with random initialisation; "
                            "its table marks those stages.", e)
            print(f"NOTE: ImageNet weights for {config.model.backbone!r} cannot be "
                  "downloaded here; feature_extraction and fine_tuning run from "
                  "RANDOM initialisation and are marked as such.", flush=True)
            base.model.weights = config.model.weights = "none"
            result = train.run(config, weights_note=note)
        histories[stage] = rundir.read_history(
            os.path.join(config.train.model_dir, rundir.HISTORY_FILE))
        rows.append(_summary(stage, config, result.metrics, note))
    best = best_stage(rows)
    for row in rows:
        row["best"] = best is not None and row["stage"] == best["stage"]
    export_note = _export_note(rows, best)
    comparison = {"model_dir": model_dir, "seconds": round(time.time() - start, 1),
                  "stages": rows, "best_stage": best["stage"] if best else None,
                  "export_model": (os.path.join(best["model_dir"], rundir.MODEL_FILE)
                                   if best else None),
                  "cache": _cache_record(cache_dir)}
    fileio.write_json(os.path.join(model_dir, COMPARISON_JSON), comparison)
    table = format_table(rows)
    fileio.write_text(os.path.join(model_dir, COMPARISON_MD),
                      "# catdog stage comparison\n\n" + table + "\n\n" + export_note + "\n")
    figures.comparison(histories, os.path.join(model_dir, COMPARISON_PNG),
                       best=best["stage"] if best else "")
    if _last_is_worse(rows, best):
        logging.warning("%s", export_note)
    else:
        logging.info("%s", export_note)
    print("\n" + table + f"\n\n{export_note}\n\nResults: {model_dir}/{{{COMPARISON_MD},"
          f"{COMPARISON_JSON},{COMPARISON_PNG}}}", flush=True)
    if cache_dir:
        note = (f"Decoded images cached for this job: {cache_dir} "
                f"({comparison['cache']['bytes'] / 1e6:.1f} MB). Reruns read it; "
                "catdog never deletes it: remove the folder when you no longer need it.")
        logging.info("%s", note)
        print(note, flush=True)
    return comparison


def best_stage(rows: list):
    """The summary row whose saved model has the highest validation accuracy.

    That is ``model_val_accuracy`` (the validation accuracy of the epoch in
    ``model.keras``, which ``--monitor`` picks); of equal ones the earlier,
    simpler stage. None when no stage has a validation accuracy.
    """
    scored = [r for r in rows if r.get("model_val_accuracy") is not None
              and r["model_val_accuracy"] == r["model_val_accuracy"]]  # not NaN
    if not scored:
        return None
    return max(scored, key=lambda r: r["model_val_accuracy"])  # first of the maxima


def _export_note(rows, best) -> str:
    """The line naming the model to export, and why when it is not the last stage's."""
    if best is None:
        return "No stage has a validation accuracy; no model to recommend for export."
    note = (f"Best stage by validation accuracy: {best['stage']} "
            f"({best['model_val_accuracy']:.4f}); export "
            f"{os.path.join(best['model_dir'], rundir.MODEL_FILE)}.")
    if _last_is_worse(rows, best):
        last = rows[-1]
        note += (f" The last stage, {last['stage']}, reached only "
                 f"{last['model_val_accuracy']:.4f}: its model is worse.")
    return note


def _last_is_worse(rows, best) -> bool:
    last = rows[-1] if rows else None
    return (best is not None and last is not best
            and last.get("model_val_accuracy") is not None
            and last["model_val_accuracy"] < best["model_val_accuracy"])


def _summary(stage, config, metrics, note):
    if stage in ("baseline", "augmented"):
        weights = "from scratch"
    elif note:
        weights = f"{config.model.backbone}, RANDOM init (no ImageNet weights)"
    elif stage == "fine_tuning":
        weights = f"{config.model.backbone}, from feature_extraction"
    else:
        weights = f"{config.model.backbone}, {_weights_label(config.model.weights)}"
    return {"stage": stage,
            "best_val_accuracy": metrics["best_val_accuracy"],
            # The validation accuracy of the epoch in model.keras (by --monitor).
            "model_val_accuracy": metrics.get("model_val_accuracy",
                                              metrics["best_val_accuracy"]),
            "best_epoch": metrics["best_epoch"],
            "final_val_accuracy": metrics["final_val_accuracy"],
            "epochs_completed": metrics["epochs_completed"],
            "train_examples": metrics["train_examples"],
            "val_examples": metrics["val_examples"],
            "trainable_params": metrics["trainable_params"],
            "seconds": metrics["seconds"],
            "weights": weights,
            "random_init": bool(note),
            "model_dir": config.train.model_dir}


def _weights_label(weights):
    if weights == "imagenet":
        return "ImageNet"
    if weights in ("none", ""):
        return "RANDOM init (--weights=none)"
    return f"ImageNet file {os.path.basename(weights)}"


def format_table(rows: list) -> str:
    """A Markdown table of the stage summaries; the last column marks the best stage."""
    header = ("| stage | best val acc | best epoch | final val acc | epochs | "
              "trainable params | seconds | weights | export |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
    for r in rows:
        lines.append(
            f"| {r['stage']} | {fmt(r['best_val_accuracy'])} | {r['best_epoch']} | "
            f"{fmt(r['final_val_accuracy'])} | {r['epochs_completed']} | "
            f"{r['trainable_params']:,} | {r['seconds']:.0f} | {r['weights']} | "
            f"{'**best**' if r.get('best') else ''} |")
    return "\n".join(lines)
