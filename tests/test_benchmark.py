import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from helpers import REPO, make_class_folder, write_image


def _load_benchmarks():
    # The benchmarks live in <repo>/benchmarks, outside the installed package.
    spec = importlib.util.spec_from_file_location(
        "benchmarks", os.path.join(REPO, "benchmarks", "__init__.py"))
    package = importlib.util.module_from_spec(spec)
    sys.modules["benchmarks"] = package
    spec.loader.exec_module(package)


if "benchmarks" not in sys.modules:
    _load_benchmarks()
from benchmarks import input_benchmark as benchmark  # noqa: E402
from benchmarks import input_memory  # noqa: E402


def test_benchmark_script_writes_consistent_json(tmp_path):
    root = make_class_folder(tmp_path / "imgs", per_class=10, size=40)
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "benchmark_input.py"),
         f"--data_dir={root}", "--image_size=32", "--batch_size=4", "--augment",
         "--max_images=16", "--repeats=2", f"--json_out={out}"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    for key in benchmark.RESULT_KEYS:
        assert key in r, key
    assert r["images"] == 16  # --max_images, balanced
    rates = [k for k in r if k.endswith("_img_per_s")]
    for k in rates:
        assert r[k] is None or (isinstance(r[k], float) and r[k] > 0), k
    assert r["idg_img_per_s"] is not None  # keras.src.legacy is importable here
    assert {"idg_augment_img_per_s", "catdog_augment_img_per_s"} <= set(r)
    # Each figure is the best of the interleaved rounds.
    assert len(r["rounds"]) == 2
    for key in ("catdog_first_epoch_img_per_s", "keras_img_per_s",
                "decode_ceiling_img_per_s", "catdog_cached_epoch_img_per_s"):
        assert r[key] == max(round_[key] for round_ in r["rounds"])
    # Ratios are computed from the measured rates of the same run.
    for ratio, num, den in [
            ("ratio_vs_keras", "catdog_first_epoch_img_per_s", "keras_img_per_s"),
            ("ratio_vs_ceiling", "catdog_first_epoch_img_per_s", "decode_ceiling_img_per_s"),
            ("ratio_cached_vs_first", "catdog_cached_epoch_img_per_s",
             "catdog_first_epoch_img_per_s"),
            ("ratio_vs_keras_cpu", "catdog_first_epoch_img_per_cpu_s", "keras_img_per_cpu_s"),
            ("ratio_ceiling_vs_keras", "decode_ceiling_img_per_s", "keras_img_per_s"),
            ("ratio_floor_vs_keras_cpu", "entropy_floor_img_per_cpu_s",
             "keras_img_per_cpu_s"),
            ("ratio_no_exif_vs_keras_cpu", "catdog_no_exif_first_epoch_img_per_cpu_s",
             "keras_img_per_cpu_s")]:
        assert r[ratio] == pytest.approx(r[num] / r[den], abs=1e-3), ratio
    assert "| JPEG entropy-decoding floor" in proc.stdout
    assert "| catdog --exif_orientation=false, first epoch |" in proc.stdout
    # catdog's first epoch and stock Keras run side by side in every round:
    # the ratio of each round, its median and spread, on one headline line.
    for key, num, den in [
            ("ratio_vs_keras_rounds", "catdog_first_epoch_img_per_s", "keras_img_per_s"),
            ("ratio_vs_keras_cpu_rounds", "catdog_first_epoch_img_per_cpu_s",
             "keras_img_per_cpu_s")]:
        assert r[key] == [pytest.approx(x[num] / x[den], abs=1e-3) for x in r["rounds"]], key
        assert r[key.replace("_rounds", "_median")] == pytest.approx(
            float(np.median(r[key])), abs=1e-3)
    assert benchmark.headline(r) in proc.stdout
    for who in ("keras", "catdog_first_epoch"):
        tails = [x[f"{who}_tail_s"] for x in r["rounds"]]
        assert all(t >= 0 for t in tails)
        assert r[f"{who}_tail_median_s"] == pytest.approx(float(np.median(tails)), abs=1e-3)
    # Kernel time and page faults per image of both first epochs, every round.
    for who in ("keras", "catdog_first_epoch"):
        for figure in ("kernel_us_per_img", "faults_per_img"):
            values = [x[f"{who}_{figure}"] for x in r["rounds"]]
            assert all(v >= 0 for v in values), (who, figure)
            assert r[f"{who}_{figure}_median"] == pytest.approx(
                float(np.median(values)), abs=0.01)
    assert benchmark.kernel_line(r) in proc.stdout
    assert r["catdog_cache_bytes"] == 16 * (32 * 32 * 3 + 4)
    assert isinstance(r["catdog_scan_seconds"], float)
    assert r["machine"]["cores"] >= 1 and len(r["loadavg_start"]) == 3
    assert "| catdog, cached epoch |" in proc.stdout
    assert "page cache warmed" in proc.stdout
    assert not any(p.startswith("catdog-bench-") for p in os.listdir(tmp_path))
    # The sample is a temporary folder: its check results are not left in the
    # user's check cache, where they would pile up run after run.
    cache = os.environ["CATDOG_CACHE_DIR"]
    assert not os.path.isdir(cache) or os.listdir(cache) == []


def test_headline_gives_catdog_first_epoch_against_stock_keras_per_round():
    r = {"ratio_vs_keras_median": 1.02, "ratio_vs_keras_rounds": [0.98, 1.02, 1.1],
         "ratio_vs_keras_cpu_median": 1.05, "ratio_vs_keras_cpu_rounds": [1.05, 1.01, 1.07],
         "ratio_vs_keras": 1.04, "ratio_vs_keras_cpu": 1.03, "repeats": 3}
    line = benchmark.headline(r)
    assert line.startswith("catdog first epoch / stock Keras image_dataset_from_directory")
    assert "wall 1.02x (median of 3 rounds, 0.98-1.1)" in line
    assert "per CPU-second 1.05x (median, 1.01-1.07)" in line
    assert "epoch end" not in line  # no tails measured
    r.update(keras_tail_median_s=0.21, keras_tail_rounds_over_50ms=2,
             catdog_first_epoch_tail_median_s=0.001,
             catdog_first_epoch_tail_rounds_over_50ms=0)
    assert benchmark.headline(r).endswith(
        "epoch end after the last batch (median; rounds over 50 ms): "
        "stock 0.21 s (2/3), catdog 0.001 s (0/3)")


def test_clock_counts_the_page_faults_and_kernel_time_of_fresh_memory():
    from benchmarks import input_loaders  # pylint: disable=import-outside-toplevel
    with input_loaders.Clock() as idle:
        pass
    with input_loaders.Clock() as clock:
        block = np.ones(64 * 2**20, np.uint8)  # 64 MB the process never touched
    assert int(block[-1]) == 1
    assert clock.faults >= 16 > idle.faults  # 4 KB pages, or 2 MB huge pages
    assert clock.kernel >= 0 and idle.kernel >= 0
    epoch = input_loaders.Epoch(images=8, wall=1.0, cpu=1.0, tail=0.0, kernel=0.004,
                                faults=300)
    assert epoch.per_image() == {"kernel_us_per_img": 500.0, "faults_per_img": 37.5}
    unknown = epoch._replace(kernel=None, faults=None)
    assert unknown.per_image() == {"kernel_us_per_img": None, "faults_per_img": None}


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the RSS from /proc")
def test_first_epochs_start_with_the_memory_freed_before_them_back_with_the_kernel():
    from benchmarks import input_loaders  # pylint: disable=import-outside-toplevel
    resident_mb = lambda: input_memory.rss_bytes() / 2**20

    # 64 KB blocks come from the C heap, and one block kept at its top stops
    # the heap shrinking when the rest are freed: their 250 MB stay resident,
    # ready for the next loader to reuse without a page fault.
    blocks = [np.ones(64 * 1024, np.uint8) for _ in range(4000)]
    keep = np.ones(64 * 1024, np.uint8)
    del blocks
    before = resident_mb()
    assert input_loaders.release_freed_memory()
    assert resident_mb() < before - 150
    assert int(keep[0]) == 1


def test_kernel_line_gives_both_first_epochs_kernel_time_and_faults_per_image():
    line = benchmark.kernel_line({
        "keras_kernel_us_per_img_median": 61.0, "keras_faults_per_img_median": 0.4,
        "catdog_first_epoch_kernel_us_per_img_median": 225.5,
        "catdog_first_epoch_faults_per_img_median": 37.0})
    assert "stock Keras 61.0 us with 0.4 page faults" in line
    assert "catdog 225.5 us with 37.0 page faults" in line


def test_benchmark_rejects_a_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="data_dir="):
        benchmark.run_benchmark(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="repeats=0"):
        benchmark.run_benchmark(str(tmp_path), repeats=0)


def test_benchmark_refuses_a_folder_whose_caches_do_not_fit(tmp_path, monkeypatch):
    root = make_class_folder(tmp_path / "imgs", per_class=10, size=16)
    per_image = 64 * 64 * 3 * 4
    # Room for 7 float32 images at 70%: 20 images are refused with the fix.
    monkeypatch.setattr(input_memory, "available_memory_bytes", lambda: 10 * per_image)
    with pytest.raises(ValueError, match=r"20 images at 64x64: .*--max_images=7 "):
        benchmark.run_benchmark(root, image_size=(64, 64), repeats=1)
    # A sample that fits passes the check (and is then timed as usual).
    input_memory.check_memory(7, (64, 64), available=10 * per_image)
    with pytest.raises(ValueError, match="--max_images=7"):
        input_memory.check_memory(8, (64, 64), available=10 * per_image)
    input_memory.check_memory(10**9, (224, 224), available=0)  # unknown: no check


def test_benchmark_times_tfrecord_shards_of_the_same_images(tmp_path):
    from catdog.sources import tfrecord_writer  # pylint: disable=import-outside-toplevel
    root = make_class_folder(tmp_path / "imgs", per_class=10, size=40)
    tfrecord_writer.write_tfrecords(root, str(tmp_path / "shards"), num_shards=3)
    r = benchmark.run_benchmark(root, image_size=(32, 32), batch_size=4, repeats=2,
                                train_tfrecords=str(tmp_path / "shards" / "*.tfrecord"),
                                log=lambda line: None)
    assert (r["tfrecords_shards"], r["tfrecords_examples"]) == (3, 20)
    for key in ("catdog_tfrecords_first_epoch_img_per_s",
                "catdog_tfrecords_cached_epoch_img_per_s"):
        assert r[key] == max(round_[key] for round_ in r["rounds"]) > 0
    assert "| catdog from 3 TFRecord shards (20 examples), first epoch |" in \
        benchmark.format_table(r)
    with pytest.raises(ValueError, match="train_tfrecords"):
        benchmark.run_benchmark(root, image_size=(32, 32), batch_size=4, repeats=1,
                                train_tfrecords=str(tmp_path / "none*.tfrecord"),
                                log=lambda line: None)


@pytest.mark.slow
def test_benchmark_builds_shards_at_the_training_size_and_times_them_against_keras(tmp_path):
    """Shards at the image size (JPEG and raw) are built from the same folder
    in the run (build time apart, not in the epoch), timed in every round,
    and their first epoch is divided by stock Keras's, wall and CPU."""
    root = make_class_folder(tmp_path / "imgs", per_class=10, size=40)
    r = benchmark.run_benchmark(root, image_size=(32, 32), batch_size=4, repeats=2,
                                max_images=16, shards_at_size=True, log=lambda line: None)
    # build_tfrecords.py's defaults at a size, as the writer resolved them
    # (at 32x32 full colour: 4:2:0 starts at 128 px).
    assert (r["shards_jpeg_quality"], r["shards_jpeg_chroma"]) == (90, "444")
    for kind in ("jpeg", "raw"):
        assert r[f"shards_{kind}_examples"] == 16
        assert r[f"shards_{kind}_build_seconds"] > 0 and r[f"shards_{kind}_bytes"] > 0
        key = f"catdog_shards_{kind}_first_epoch_img_per_s"
        assert r[key] == max(round_[key] for round_ in r["rounds"]) > 0
        cpu = f"catdog_shards_{kind}_first_epoch_img_per_cpu_s"
        assert r[f"ratio_shards_{kind}_vs_keras"] == pytest.approx(
            r[key] / r["keras_img_per_s"], abs=1e-3)
        assert r[f"ratio_shards_{kind}_vs_keras_cpu"] == pytest.approx(
            r[cpu] / r["keras_img_per_cpu_s"], abs=1e-3)
    assert r["shards_raw_bytes"] > 16 * 32 * 32 * 3 > r["shards_jpeg_bytes"] / 2
    table = benchmark.format_table(r)
    assert "| catdog from shards at 32x32 (JPEG q90), first epoch |" in table
    assert "| catdog from shards at 32x32 (raw uint8), first epoch |" in table
    assert (f"- catdog from shards at 32x32 (JPEG q90) / stock Keras from the folder, "
            f"first epoch: {r['ratio_shards_jpeg_vs_keras']}x wall, "
            f"{r['ratio_shards_jpeg_vs_keras_cpu']}x per CPU-second") in table
    # The shards and the sample's check results lived in the run's temporary folder.
    cache = os.environ["CATDOG_CACHE_DIR"]
    assert not os.path.isdir(cache) or os.listdir(cache) == []


def test_benchmark_times_every_loader_on_the_usable_files_of_a_messy_folder(tmp_path):
    """Stock Keras stops at the first corrupt file; the benchmark leaves the
    unusable files out of every loader, says which, and touches nothing."""
    import helpers  # pylint: disable=import-outside-toplevel
    root = make_class_folder(tmp_path / "imgs", per_class=8, size=40)
    bad = [helpers.write_truncated_jpeg(os.path.join(root, "cats", "cut.jpg")),
           helpers.write_html(os.path.join(root, "dogs", "page.jpg")),
           helpers.write_jpeg_bomb(os.path.join(root, "dogs", "bomb.jpg"))]
    before = sorted(os.listdir(os.path.join(root, "cats")) + os.listdir(os.path.join(root, "dogs")))
    r = benchmark.run_benchmark(root, image_size=(32, 32), batch_size=4, repeats=1,
                                log=lambda line: None)
    assert (r["files_checked"], r["images"], r["catdog_skipped_files"]) == (19, 16, 3)
    assert sorted(s["path"] for s in r["skipped_files"]) == sorted(bad)
    assert all(s["reason"] for s in r["skipped_files"])
    for key in ("keras_img_per_s", "idg_img_per_s", "decode_ceiling_img_per_s",
                "catdog_first_epoch_img_per_s"):
        assert r[key] and r[key] > 0, key
    assert "3 unusable, left out of every loader" in benchmark.format_table(r)
    assert sorted(os.listdir(os.path.join(root, "cats")) +
                  os.listdir(os.path.join(root, "dogs"))) == before


def _run_script(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", "benchmark_input.py"),
                           *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_benchmark_says_whether_the_input_or_the_run_s_model_is_the_bottleneck(tmp_path):
    import helpers  # pylint: disable=import-outside-toplevel
    root = make_class_folder(tmp_path / "imgs", per_class=6, size=40)
    run = helpers.write_run(tmp_path / "run", helpers.build_model(2, (24, 24)),
                            ["cats", "dogs"], (24, 24))
    out = tmp_path / "bench.json"
    proc = _run_script(f"--data_dir={root}", f"--model_dir={run}", "--batch_size=4",
                       "--max_images=8", "--repeats=1", "--model_steps=3",
                       f"--json_out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["image_size"] == [24, 24]  # the run's input size, not the flag default
    assert r["model_train_steps"] == 3 and r["model_device"] == "CPU"
    assert r["model_train_img_per_s"] > 0
    assert r["ratio_model_vs_input"] == pytest.approx(
        r["model_train_img_per_s"] / r["catdog_first_epoch_img_per_s"], rel=1e-3)
    expected = "input" if r["ratio_model_vs_input"] > 1 else "model"
    assert r["bottleneck"] == expected
    assert r["bottleneck_verdict"].startswith(
        "input is the bottleneck: the model could train" if expected == "input"
        else "the model is the bottleneck: catdog feeds it")
    assert f"- {r['bottleneck_verdict']}" in proc.stdout
    assert "training step on in-memory batches, CPU |" in proc.stdout


def test_benchmark_model_dir_must_be_a_finished_run(tmp_path):
    root = make_class_folder(tmp_path / "imgs", per_class=2, size=16)
    (tmp_path / "empty").mkdir()
    proc = _run_script(f"--data_dir={root}", f"--model_dir={tmp_path / 'empty'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--model_dir" in proc.stderr and "model.keras" in proc.stderr
    proc = _run_script(f"--data_dir={root}", "--scale=10,20")
    assert proc.returncode == 2 and "--scale" in proc.stderr


def test_model_timing_runs_training_steps_that_update_the_weights():
    import helpers  # pylint: disable=import-outside-toplevel
    from benchmarks import input_model  # pylint: disable=import-outside-toplevel
    model = helpers.build_model(3, (16, 16))
    before = [w.numpy().copy() for w in model.trainable_weights]
    r = input_model.time_train_step(model, {"class_names": ["a", "b", "c"]}, (16, 16),
                                    batch_size=2, steps=2, warmup=1)
    assert r["model_train_steps"] == 2 and r["model_train_img_per_s"] > 0
    assert model.optimizer.iterations.numpy() == 3  # warm-up + timed: optimizer steps
    assert any(not np.array_equal(a, w.numpy())
               for a, w in zip(before, model.trainable_weights))


def test_bottleneck_verdict_names_the_slower_side():
    from benchmarks import input_model  # pylint: disable=import-outside-toplevel
    slow_input = input_model.bottleneck(100.0, 320.0, cached_rate=5000.0)
    assert slow_input["bottleneck"] == "input"
    assert slow_input["bottleneck_verdict"].startswith(
        "input is the bottleneck: the model could train 3.2x faster than catdog feeds it")
    assert "the model limits them" in slow_input["bottleneck_verdict"]
    slow_model = input_model.bottleneck(400.0, 100.0, cached_rate=9000.0)
    assert slow_model["bottleneck"] == "model"
    assert slow_model["bottleneck_verdict"].startswith(
        "the model is the bottleneck: catdog feeds it 4.0x faster than it trains")
    assert slow_model["ratio_model_vs_input"] == 0.25
    tiny = input_model.bottleneck(1000.0, 13.3, cached_rate=28000.0)
    assert tiny["ratio_model_vs_cached_input"] == 0.000475  # not rounded to 0.0


def test_scale_mode_times_each_phase_in_a_temporary_folder_it_deletes(tmp_path):
    tmp, cache = tmp_path / "tmp", tmp_path / "cache"
    tmp.mkdir()
    out = tmp_path / "scale.json"
    env = dict(os.environ, TMPDIR=str(tmp), CATDOG_CACHE_DIR=str(cache))
    proc = _run_script("--scale=50,100", f"--json_out={out}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["counts"] == [50, 100]
    phases = [(row["files"], row["phase"]) for row in r["phases"]]
    assert phases == [(n, p) for n in (50, 100)
                      for p in ("listing", "check_cold", "check_warm", "split")]
    for row in r["phases"]:
        assert row["files_per_s"] > 0 and row["peak_extra_rss_bytes"] >= 0
    assert "| 100 | check_cold |" in proc.stdout
    assert os.listdir(tmp) == []  # generated files and their check cache deleted
    assert not cache.exists()  # the user's check cache is left alone


def test_scale_mode_writes_distinct_usable_jpegs_in_class_folders(tmp_path):
    from benchmarks import input_scale  # pylint: disable=import-outside-toplevel
    from catdog import scan  # pylint: disable=import-outside-toplevel
    input_scale.write_jpegs(str(tmp_path), 12, size=16)
    paths, labels, names = scan.list_image_files(str(tmp_path))
    assert names == ["cats", "dogs"] and sorted(labels) == [0] * 6 + [1] * 6
    contents = {open(p, "rb").read() for p in paths}
    assert len(contents) == 12  # every file's bytes differ
    assert all(c.ok for c in scan.check_files(paths, use_cache=False))
    with pytest.raises(ValueError, match="scale='3'"):
        input_scale.parse_counts("3")


def test_benchmark_times_an_epoch_through_a_local_data_service(tmp_path):
    root = make_class_folder(tmp_path / "imgs", per_class=9, size=40)
    r = benchmark.run_benchmark(root, image_size=(32, 32), batch_size=4, repeats=1,
                                service_workers=(1, 2), log=lambda line: None)
    for workers in (1, 2):
        key = f"catdog_service_{workers}w_img_per_s"
        assert r[key] == r["rounds"][0][key] > 0, key
        assert r[f"catdog_service_{workers}w_img_per_cpu_s"] > 0
        # 18 images in batches of 4: 4 full batches, each image at most once.
        assert r["rounds"][0][f"catdog_service_{workers}w_images"] == 16
    table = benchmark.format_table(r)
    assert "| catdog through a local tf.data service, 1 in-process worker, epoch |" in table
    assert "| catdog through a local tf.data service, 2 in-process workers, epoch |" in table
    with pytest.raises(ValueError, match="data_service_workers"):
        benchmark.run_benchmark(root, image_size=(32, 32), batch_size=4, repeats=1,
                                service_workers=(0,), log=lambda line: None)
