"""Each stage script end to end with a shrunken config, as a user runs it."""

import json
import os
import re
import subprocess
import sys

import pytest

from helpers import REPO, make_class_folder, tree_state
from catdog import config as C
from catdog import models

SCRIPTS = os.path.join(REPO, "scripts")


def _run(script, *args, timeout=300, env=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO, **(env or {}))
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, script), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _common(train_dir, val_dir):
    return [f"--train_dir={train_dir}", f"--val_dir={val_dir}", "--image_size=32",
            "--batch_size=8", "--epochs=1", "--verbose=0"]


def test_all_four_stage_scripts(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    common = _common(train_dir, val_dir)
    backbone = ["--backbone=mobilenet", "--backbone_alpha=0.25", "--weights=none"]
    runs = {
        "baseline": _run("train_baseline.py", *common, f"--model_dir={tmp_path}/b"),
        "augmented": _run("train_augmented.py", *common, f"--model_dir={tmp_path}/a"),
        "feature_extraction": _run("train_feature_extraction.py", *common, *backbone,
                                   f"--model_dir={tmp_path}/fe"),
    }
    runs["fine_tuning"] = _run("train_fine_tuning.py", *common,
                               f"--init_from={tmp_path}/fe", f"--model_dir={tmp_path}/ft")
    for stage, proc in runs.items():
        assert proc.returncode == 0, (stage, proc.stderr[-3000:])
    for stage, d in (("baseline", "b"), ("augmented", "a"),
                     ("feature_extraction", "fe"), ("fine_tuning", "ft")):
        metrics = json.loads((tmp_path / d / "metrics.json").read_text())
        assert metrics["stage"] == stage
        assert metrics["epochs_completed"] == 1
        assert (tmp_path / d / "flags.txt").exists()
    # flags.txt repeats the run.
    flagfile = (tmp_path / "b" / "flags.txt").read_text()
    assert f"--train_dir={train_dir}" in flagfile and "--image_size=32" in flagfile
    again = _run("train_baseline.py", f"--flagfile={tmp_path}/b/flags.txt",
                 f"--model_dir={tmp_path}/b2")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "b2" / "config.json").read_text())["data"] == \
        json.loads((tmp_path / "b" / "config.json").read_text())["data"]


@pytest.mark.parametrize("args,needle", [
    (["--image_size=8"], "--image_size"),
    (["--batch_size=0"], "--batch_size"),
    (["--epochs=0"], "--epochs"),
    (["--validation_split=1.5", "--val_dir="], "--validation_split"),
    (["--class_names=cats,horses"], "horses"),
    (["--early_stopping_patience=-1"], "--early_stopping_patience"),
    # An unknown metric, after the data is indexed: the valid ones are listed.
    (["--monitor=val_f1"], "val_loss, val_accuracy, val_precision, val_recall, val_auc"),
    (["--top_k=1"], "--top_k"),  # two classes: one sigmoid output
])
def test_usage_errors_exit_2_with_a_message(tiny_folders, tmp_path, args, needle):
    train_dir, val_dir = tiny_folders
    proc = _run("train_baseline.py", *_common(train_dir, val_dir), *args,
                f"--model_dir={tmp_path}/m")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_flag_is_a_usage_error(tmp_path):
    proc = _run("train_baseline.py", "--trian_dir=x", f"--model_dir={tmp_path}/m")
    assert proc.returncode == 2
    assert "trian_dir" in proc.stderr


def test_missing_train_dir_is_a_usage_error(tmp_path):
    proc = _run("train_baseline.py", f"--train_dir={tmp_path}/nowhere",
                f"--model_dir={tmp_path}/m", "--verbose=0")
    assert proc.returncode == 2
    assert "nowhere" in proc.stderr


def test_help_documents_every_flag():
    proc = _run("train_baseline.py", "--help")  # absl exits 1 after help
    for flag in ("--train_dir", "--val_dir", "--image_size", "--batch_size", "--cache",
                 "--backbone", "--weights", "--mixed_precision", "--strategy",
                 "--model_dir", "--init_from"):
        assert flag in proc.stdout


def test_run_pipeline_small(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    proc = _run("run_pipeline.py", *_common(train_dir, val_dir),
                "--backbone=mobilenet", "--backbone_alpha=0.25", "--weights=none",
                f"--model_dir={tmp_path}/p")
    assert proc.returncode == 0, proc.stderr[-3000:]
    comp = json.loads((tmp_path / "p" / "comparison.json").read_text())
    assert [r["stage"] for r in comp["stages"]] == [
        "baseline", "augmented", "feature_extraction", "fine_tuning"]
    assert (tmp_path / "p" / "comparison.png").stat().st_size > 1000
    table = (tmp_path / "p" / "comparison.md").read_text()
    assert "| feature_extraction |" in table and "RANDOM init" in table
    assert "| fine_tuning |" in proc.stdout
    # Each stage trained with its own preset's schedule, not stage 1's.
    for stage in C.STAGES:
        train = json.loads((tmp_path / "p" / stage / "config.json").read_text())["train"]
        preset = C.for_stage(stage).train
        assert (train["lr_schedule"], train["warmup_epochs"]) == (
            preset.lr_schedule, preset.warmup_epochs), stage
    # ... and the augmented CNN its own dropout.
    model = models.load_model(str(tmp_path / "p" / "augmented"))
    assert model.get_layer("head_dropout").rate == C.augmented().model.dropout == 0.25
    # Without --cache the four stages share one file cache in the job's folder
    # (one key per split), and say where it is and how big.
    cache = tmp_path / "p" / "cache"
    # A name is catdog-<split>-<hex digest>[-c<chunk>]...: the digest may begin with "c".
    keys = {re.match(r"catdog-[a-z]+-[0-9a-f]+", n.name).group(0) for n in cache.iterdir()
            if n.name.endswith(".index")}
    assert len([k for k in keys if k.startswith("catdog-train-")]) == 1, keys
    assert len([k for k in keys if k.startswith("catdog-val-")]) == 1, keys
    assert comp["cache"]["dir"] == str(cache) and comp["cache"]["bytes"] > 0
    assert f"Decoded images cached for this job: {cache}" in proc.stdout
    for stage in ("baseline", "fine_tuning"):
        config = json.loads((tmp_path / "p" / stage / "config.json").read_text())
        assert config["data"]["cache"] == str(cache)
    # flags.txt leaves --cache out, so a rerun from it shares the cache too.
    assert "--cache" not in (tmp_path / "p" / "flags.txt").read_text()


@pytest.mark.slow
def test_run_pipeline_with_an_explicit_memory_cache_caches_per_stage(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    proc = _run("run_pipeline.py", *_common(train_dir, val_dir), "--stages=baseline",
                "--cache=memory", f"--model_dir={tmp_path}/p")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "p" / "cache").exists()
    assert json.loads((tmp_path / "p" / "comparison.json").read_text())["cache"] is None
    config = json.loads((tmp_path / "p" / "baseline" / "config.json").read_text())
    assert config["data"]["cache"] == "memory"
    assert "--cache=memory" in (tmp_path / "p" / "flags.txt").read_text()


def test_scan_and_training_agree_file_by_file_on_a_salted_folder(tmp_path):
    """scan_data.py and a training run, each with its own check cache, skip
    exactly the same files for the same reasons (every bad kind, including a
    24000x24000 JPEG), use every quirky-but-valid file, and leave the folder
    byte for byte as it was."""
    import helpers  # pylint: disable=import-outside-toplevel
    root = tmp_path / "photos"
    written = helpers.write_tree(root, {
        "cats": ["jpeg"] * 6 + sorted(helpers.VALID),
        "dogs": ["jpeg"] * 6 + sorted(helpers.BAD),
    })
    # Litter a real photo folder carries; neither tool counts it as an image.
    (root / "cats" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "dogs" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    before = tree_state(root)

    scan_json = tmp_path / "scan.json"
    scan_proc = _run("scan_data.py", f"--data_dir={root}", f"--json_out={scan_json}",
                     env={"CATDOG_CACHE_DIR": str(tmp_path / "cache-scan")})
    train_proc = _run("train_baseline.py", f"--train_dir={root}", "--val_dir=",
                      "--validation_split=0.25", "--image_size=32", "--batch_size=4",
                      "--epochs=1", "--verbose=0", f"--model_dir={tmp_path}/run",
                      env={"CATDOG_CACHE_DIR": str(tmp_path / "cache-train")})
    assert scan_proc.returncode == 0, scan_proc.stderr[-3000:]
    assert train_proc.returncode == 0, train_proc.stderr[-3000:]

    scanned = json.loads(scan_json.read_text())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    scan_bad = {b["path"]: b["reason"] for b in scanned["bad_files"]}
    train_bad = {s["path"]: s["reason"] for s in metrics["skipped_files"]}
    assert scan_bad == train_bad
    # Exactly the BAD kinds, each for the reason it was made with.
    bad_kinds = dict(zip(written["dogs"][6:], sorted(helpers.BAD)))
    assert set(scan_bad) == set(bad_kinds)
    for path, kind in bad_kinds.items():
        assert scan_bad[path].startswith(helpers.BAD[kind][2]), (kind, scan_bad[path])
    assert any("24000x24000" in r for r in scan_bad.values())
    # Every other image is used: the usable count is the images trained and validated on.
    usable = sum(len(v) for v in written.values()) - len(bad_kinds)
    assert scanned["num_usable"] == usable
    assert metrics["train_examples"] + metrics["val_examples"] == usable
    assert tree_state(root) == before


@pytest.mark.slow
def test_fine_tuning_script_validates_on_the_split_of_stage_3(tmp_path):
    """Stage 3 holds out --validation_split; stage 4 called with only
    --init_from and --model_dir uses exactly that split, and a --seed that
    would give another split is refused before training."""
    root = make_class_folder(tmp_path / "photos", per_class=12)
    fe = _run("train_feature_extraction.py", f"--train_dir={root}", "--validation_split=0.25",
              "--image_size=32", "--batch_size=8", "--epochs=1", "--verbose=0",
              "--backbone=mobilenet", "--backbone_alpha=0.25", "--weights=none",
              f"--model_dir={tmp_path}/fe")
    assert fe.returncode == 0, fe.stderr[-3000:]
    stage4 = [f"--init_from={tmp_path}/fe", f"--model_dir={tmp_path}/ft", "--epochs=1",
              "--verbose=0"]
    refused = _run("train_fine_tuning.py", *stage4, "--seed=7")
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "--seed" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "ft" / "model.keras").exists()
    ft = _run("train_fine_tuning.py", *stage4)
    assert ft.returncode == 0, ft.stderr[-3000:]
    split = lambda d: json.loads((tmp_path / d / "split.json").read_text())
    assert split("ft")["train"] == split("fe")["train"]
    assert split("ft")["val"] == split("fe")["val"]
    assert f"--train_dir={root}" in (tmp_path / "ft" / "flags.txt").read_text()


@pytest.mark.slow
def test_rerun_with_other_settings_exits_2_and_leaves_the_run_alone(tiny_folders, tmp_path):
    train_dir, val_dir = tiny_folders
    args = [*_common(train_dir, val_dir), f"--model_dir={tmp_path}/m"]
    first = _run("train_baseline.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    before = tree_state(tmp_path / "m")
    second = _run("train_baseline.py", *args, "--learning_rate=0.01")
    assert second.returncode == 2, second.stderr[-3000:]
    assert "learning_rate 0.001 -> 0.01" in second.stderr
    assert "--model_dir" in second.stderr and "backup" in second.stderr
    assert "Traceback" not in second.stderr
    after = tree_state(tmp_path / "m")
    assert {k: v for k, v in after.items() if ".catdog.lock" not in k} == \
        {k: v for k, v in before.items() if ".catdog.lock" not in k}


@pytest.mark.parametrize("args,needle", [
    (["--mixup=-0.2"], "--mixup"),
    (["--cutmix=1.5"], "--cutmix"),
    (["--cutmix=1", "--class_weight=balanced"], "--class_weight"),
    (["--rand_augment", "--rand_augment_num_ops=0"], "--rand_augment_num_ops"),
])
def test_mixing_and_rand_augment_usage_errors_exit_2(tiny_folders, tmp_path, args, needle):
    proc = _run("train_augmented.py", *_common(*tiny_folders), *args,
                f"--model_dir={tmp_path}/m")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "m" / "config.json")
