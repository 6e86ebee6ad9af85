"""Tests for catdog.scan.audit (the folder audit) and scripts/scan_data.py."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import helpers
from catdog import scan
from helpers import tree_state

from test_scan_check import (  # noqa: F401  (shared fixtures)
    REPO, scan_cache_dir)


@pytest.fixture
def scan_messy_tree(tmp_path):
    """cats: 8 usable + 2 bad; dogs: 4 usable (one a copy of a cat) + 1
    within-class copy; valid/: a leaked copy of a cat."""
    root = tmp_path / "training_set"
    written = helpers.write_tree(root, {
        "cats": ["jpeg"] * 5 + ["png", "gif", "nested/bmp", "empty", "truncated_jpeg"],
        "dogs": ["jpeg", "jpeg", "png"],
    })
    shutil.copy(written["cats"][0], root / "dogs" / "looks_like_a_dog.jpg")
    shutil.copy(written["dogs"][0], root / "dogs" / "copy_of_dog.jpg")
    os.makedirs(tmp_path / "test_set" / "cats")
    shutil.copy(written["cats"][1], tmp_path / "test_set" / "cats" / "leaked.jpg")
    helpers.write_jpeg(tmp_path / "test_set" / "cats" / "fine.jpg")
    return root, written, tmp_path / "test_set"


def test_scan_directory_reports_counts_bad_files_duplicates_and_imbalance(scan_messy_tree):
    root, written, other = scan_messy_tree
    report = scan.scan_directory(str(root), other_dirs=[str(other)], progress=False)
    result = json.loads(json.dumps(report.to_dict()))  # JSON-ready.

    assert result["classes"] == [
        {"name": "cats", "total": 10, "usable": 8, "bad": 2},
        {"name": "dogs", "total": 5, "usable": 5, "bad": 0}]
    assert (result["num_files"], result["num_usable"], result["num_bad"]) == (15, 13, 2)
    assert result["bad_files"] == [
        {"path": written["cats"][8], "reason": "empty file (0 bytes)"},
        {"path": written["cats"][9], "reason": "truncated JPEG: no end-of-image marker"}]
    assert result["bad_reasons"] == {"empty file (0 bytes)": 1, "truncated JPEG": 1}
    assert result["duplicates"]["across_classes"] == [
        [written["cats"][0], str(root / "dogs" / "looks_like_a_dog.jpg")]]
    assert result["duplicates"]["across_dirs"] == [
        [written["cats"][1], str(other / "cats" / "leaked.jpg")]]
    assert result["duplicates"]["within_class"] == [
        [str(root / "dogs" / "copy_of_dog.jpg"), written["dogs"][0]]]
    assert result["imbalance_ratio"] == pytest.approx(8 / 5)
    assert any(w.startswith("class imbalance: largest/smallest = 1.60") for w in
               result["warnings"])
    assert result["formats"] == {"bmp": 1, "gif": 1, "jpeg": 9, "png": 2}
    assert result["image_sizes"]["width"] == {"min": 32, "median": 32, "max": 32}

    text = report.format_text()
    assert "bad files (skipped by training): 2" in text
    assert "cats/empty_8.jpg: empty file (0 bytes)" in text
    assert "cats/photo_0.jpg == dogs/looks_like_a_dog.jpg" in text
    assert "WARNING: class imbalance" in text
    assert not any("dataset splits" in w for w in result["warnings"])


def test_scan_warns_when_the_classes_look_like_dataset_splits(tmp_path):
    root = tmp_path / "data"
    helpers.write_tree(root, {"train": ["cats/jpeg", "dogs/jpeg"],
                               "valid": ["cats/png", "dogs/png"]})
    report = scan.scan_directory(root, progress=False)
    assert any("look like dataset splits" in w for w in report.warnings)
    assert "point at one split, e.g. " + str(root / "train") in report.format_text()


def test_scan_never_modifies_the_scanned_folders(scan_messy_tree, scan_cache_dir):
    root, _, other = scan_messy_tree
    before = tree_state(root.parent)
    scan.scan_directory(root, other_dirs=[other], progress=False)
    scan.scan_directory(root, other_dirs=[other], progress=False)  # From the cache.
    after = tree_state(root.parent)
    cache_entries = {k for k in after if k.startswith("scan-cache")}
    assert cache_entries  # The cache was written, next to the data, not in it.
    assert {k: v for k, v in after.items() if k not in cache_entries} == before


def test_other_dirs_overlapping_data_dir_do_not_pair_a_file_with_itself(scan_messy_tree):
    root, written, _ = scan_messy_tree
    report = scan.scan_directory(root, other_dirs=[root / "cats"], progress=False)
    assert report.duplicates_across_dirs == ()
    assert report.duplicates_across_classes == (
        (written["cats"][0], str(root / "dogs" / "looks_like_a_dog.jpg")),)


def test_scan_directory_rejects_a_missing_other_dir(scan_messy_tree):
    root, _, other = scan_messy_tree
    with pytest.raises(ValueError, match=r"other directory '.*test_sets' does not exist"):
        scan.scan_directory(root, other_dirs=[str(other) + "s"], progress=False)


# --------------------------------------------------------------------------
# scripts/scan_data.py
# --------------------------------------------------------------------------


def _run_script(*flags_):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "scan_data.py"), *flags_],
        capture_output=True, text=True, timeout=240, env=dict(os.environ))


def test_script_prints_report_and_writes_json(scan_messy_tree, tmp_path):
    root, _, other = scan_messy_tree
    json_out = tmp_path / "reports" / "scan.json"
    result = _run_script(f"--data_dir={root}", f"--other_dirs={other}",
                         f"--json_out={json_out}")
    assert result.returncode == 0, result.stderr
    assert "bad files (skipped by training): 2" in result.stdout
    report = json.loads(json_out.read_text(encoding="utf-8"))
    assert report["num_bad"] == 2 and len(report["duplicates"]["across_dirs"]) == 1


@pytest.mark.parametrize("flags_, message", [
    (["--data_dir=/nonexistent/catdog"], "'/nonexistent/catdog' does not exist"),
    # Each run pays a TensorFlow import; the flag checks below are slow-only.
    pytest.param([], "--data_dir is required", marks=pytest.mark.slow),
    pytest.param(["--data_dir=x", "--max_pixels=lots"], "--max_pixels",
                 marks=pytest.mark.slow),
])
def test_script_usage_errors_exit_2_without_traceback(flags_, message):
    result = _run_script(*flags_)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


class _CountedLabel(int):
    """An int label that counts how often it is compared for equality."""

    comparisons = 0

    def __eq__(self, other):
        type(self).comparisons += 1
        return int(self) == other

    __hash__ = int.__hash__


def test_audit_work_grows_linearly_with_files_classes_and_copies(tmp_path, monkeypatch):
    """Class counts and copies within a class are tallied once per file, not
    once per file and class or per pair of copies (40 classes and 1,500
    identical files took 3,000 + 2,250,000 label comparisons)."""
    from catdog.scan import audit  # pylint: disable=import-outside-toplevel
    classes = [f"class{i:02d}" for i in range(40)]
    helpers.write_tree(tmp_path / "data", {name: ["png", "png"] for name in classes})
    index = audit.listing.index_class_folders

    def counted_index(*args, **kwargs):
        paths, labels, names, ignored = index(*args, **kwargs)
        return paths, [_CountedLabel(l) for l in labels], names, ignored

    copies = [(f"/elsewhere/copy{i}.jpg", 100, ("class", _CountedLabel(3)))
              for i in range(1500)]
    monkeypatch.setattr(audit.listing, "index_class_folders", counted_index)
    monkeypatch.setattr(audit, "_identical_groups", lambda items, threads: [copies])
    _CountedLabel.comparisons = 0
    report = scan.scan_directory(str(tmp_path / "data"), progress=False, use_cache=False)
    assert [(c.name, c.total, c.usable, c.bad) for c in report.classes] == [
        (name, 2, 2, 0) for name in classes]
    assert report.duplicates_within_class == (tuple(p for p, _, _ in copies),)
    assert _CountedLabel.comparisons <= 10 * (80 + 1500)  # a few per file and copy


def test_files_of_one_size_are_identical_only_when_every_byte_is(tmp_path):
    """Same-size files are first compared on their first 4 KB; files that
    match there but differ later are not copies."""
    head = bytes(range(256)) * 16  # 4 KB, shared by every file below
    a, b, c, d = (tmp_path / n for n in ("a.bmp", "b.bmp", "c.bmp", "d.bmp"))
    a.write_bytes(head + b"tail-1" * 100)
    b.write_bytes(head + b"tail-2" * 100)  # same size and start as a
    c.write_bytes(head + b"tail-1" * 100)  # a's copy
    d.write_bytes(b"x" + head[1:] + b"tail-1" * 100)  # differs in its first byte
    found = scan.identical_across([str(a), str(d)], [str(b), str(c)])
    assert found == [((str(a),), (str(c),))]
    # Copies on one side only are not "across".
    assert scan.identical_across([str(a), str(c)], [str(b), str(d)]) == []
