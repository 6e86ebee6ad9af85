"""Tests for catdog.scan.cache: verdicts of earlier checks, on disk."""

import json
import logging
import os

import pytest

import helpers
from catdog import scan
from helpers import tree_state

from test_scan_check import (  # noqa: F401  (shared fixtures)
    scan_cache_dir, scan_decode_calls)


def _cache_files(cache_dir):
    return sorted(cache_dir.glob("scan-*.json")) if cache_dir.exists() else []


def test_cache_skips_the_decode_on_a_second_run(tmp_path, scan_cache_dir, scan_decode_calls):
    root = tmp_path / "data"
    written = helpers.write_tree(root, {"cats": ["jpeg", "empty"], "dogs": ["png"]})
    paths = written["cats"] + written["dogs"]

    first = scan.check_files(paths)
    assert scan_decode_calls and len(_cache_files(scan_cache_dir)) == 1
    scan_decode_calls.clear()
    second = scan.check_files(paths)
    assert scan_decode_calls == []
    assert second == first


def test_cache_rechecks_changed_files_and_other_max_pixels(
        tmp_path, scan_cache_dir, scan_decode_calls):
    path = helpers.write_jpeg(tmp_path / "data" / "a.jpg")
    assert scan.check_files([path])[0].ok

    os.utime(path, ns=(1, 1))  # Same bytes, new mtime: checked again.
    scan_decode_calls.clear()
    assert scan.check_files([path])[0].ok
    assert scan_decode_calls

    helpers.write_truncated_jpeg(path)
    assert scan.check_files([path])[0].reason.startswith("truncated JPEG")
    helpers.write_jpeg(path)
    assert not scan.check_files([path], max_pixels=10)[0].ok
    assert scan.check_files([path])[0].ok


@pytest.mark.parametrize("garbage", [b"\x00\xff not json", b"[1, 2]",
                                     b'{"schema": 1, "entries": []}'])
def test_damaged_cache_is_ignored_and_rewritten(tmp_path, scan_cache_dir, garbage):
    paths = [helpers.write_jpeg(tmp_path / "data" / "a.jpg"),
             helpers.write_empty(tmp_path / "data" / "b.jpg")]
    expected = scan.check_files(paths, use_cache=False)
    scan.check_files(paths)
    (cache_file,) = _cache_files(scan_cache_dir)
    cache_file.write_bytes(garbage)

    assert scan.check_files(paths) == expected
    assert json.loads(cache_file.read_text())["schema"] == 2
    assert scan.check_files(paths) == expected


def test_damaged_cache_entries_are_ignored(tmp_path, scan_cache_dir):
    path = helpers.write_jpeg(tmp_path / "data" / "a.jpg")
    scan.check_files([path])
    (cache_file,) = _cache_files(scan_cache_dir)
    content = json.loads(cache_file.read_text())
    (key,) = content["entries"]
    content["entries"][key] = ["nonsense"]
    cache_file.write_text(json.dumps(content))
    assert scan.check_files([path])[0].ok


def test_cache_is_never_written_inside_the_data_folder(tmp_path, caplog):
    root = tmp_path / "data"
    written = helpers.write_tree(root, {"cats": ["jpeg"], "dogs": ["png"]})
    before = tree_state(root)
    with caplog.at_level(logging.WARNING, logger="catdog.scan"):
        checks = scan.check_files(written["cats"] + written["dogs"],
                                  cache_dir=str(root / "cats" / ".cache"))
    assert all(c.ok for c in checks)
    assert tree_state(root) == before
    assert "inside the data folder" in caplog.text


def test_cache_location_follows_env_var_and_argument(tmp_path, scan_cache_dir):
    path = helpers.write_jpeg(tmp_path / "data" / "a.jpg")
    assert scan.default_cache_dir() == str(scan_cache_dir)
    scan.check_files([path])
    assert len(_cache_files(scan_cache_dir)) == 1
    scan.check_files([path], cache_dir=str(tmp_path / "mine"))
    assert len(_cache_files(tmp_path / "mine")) == 1
    scan.check_files([path], cache_dir=str(tmp_path / "unused"), use_cache=False)
    assert not (tmp_path / "unused").exists()


def test_cache_forgets_files_that_are_gone_and_keeps_the_others(tmp_path, scan_cache_dir):
    """A folder whose files are replaced run after run keeps a cache the size of
    the folder, not of every file it ever held; checking one part of a folder
    (validation files apart from training files) keeps the other part's."""
    root = tmp_path / "data"
    written = helpers.write_tree(root, {"cats": ["jpeg"] * 6, "dogs": ["png"] * 6})
    paths = written["cats"] + written["dogs"]
    entries = lambda: set(json.loads(_cache_files(scan_cache_dir)[0].read_text())["entries"])

    scan.check_files(paths[::2])
    scan.check_files(paths[1::2])  # the other part of the same folder
    assert len(_cache_files(scan_cache_dir)) == 1
    assert entries() == {os.path.abspath(p) for p in paths}
    for generation in range(3):  # files renamed between runs, as a user re-exports
        renamed = []
        for path in paths:
            new = f"{path[:-4]}_{generation}{path[-4:]}"
            os.rename(path, new)
            renamed.append(new)
        paths = renamed
        scan.check_files(paths)
        assert entries() == {os.path.abspath(p) for p in paths}, generation


def test_a_cached_verdict_keeps_the_files_exif_orientation(
        tmp_path, scan_cache_dir, scan_decode_calls, monkeypatch):
    from catdog.scan import check as check_lib
    upright = helpers.upright_pixels()
    paths = [helpers.write_oriented_jpeg(tmp_path / "data" / f"o{k}.jpg", k, upright)
             for k in (1, 6, 8)]
    paths.append(helpers.write_png(tmp_path / "data" / "p.png"))
    first = scan.check_files(paths)
    assert [c.exif_orientation for c in first] == [1, 6, 8, 1]
    monkeypatch.setattr(check_lib, "_ORIENTATIONS", {})
    scan_decode_calls.clear()
    second = scan.check_files(paths)
    assert scan_decode_calls == []  # from the cache ...
    assert second == first  # ... with the orientations
    assert scan.known_orientations(paths) == [1, 6, 8, 1]
