"""Tests for catdog.fileio: atomic writes, JSON, local vs remote paths."""

import json
import os

import numpy as np
import pytest

from catdog import fileio


def test_write_text_replaces_atomically_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "a.txt")
    fileio.write_text(path, "old\n")
    fileio.write_text(path, "new\n")
    assert open(path).read() == "new\n"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "a.json")
    fileio.write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with fileio.atomic_open(path) as f:
            f.write('{"v": ')
            raise RuntimeError("disk full")
    assert json.loads(open(path).read()) == {"v": 1}
    assert os.listdir(tmp_path) == ["a.json"]


def test_atomic_path_keeps_a_suffix_and_binary_mode(tmp_path):
    path = str(tmp_path / "p.png")
    with fileio.atomic_path(path, suffix=".png") as tmp:
        assert tmp.endswith(".png") and fileio.TMP_MARKER in tmp and tmp != path
        with open(tmp, "wb") as f:
            f.write(b"\x89PNG")
    with fileio.atomic_open(str(tmp_path / "b.bin"), "wb") as f:
        f.write(b"\x00\x01")
    assert open(path, "rb").read() == b"\x89PNG"
    assert open(tmp_path / "b.bin", "rb").read() == b"\x00\x01"


def test_json_takes_numpy_and_tuples_and_names_that_are_not_utf8(tmp_path):
    path = str(tmp_path / "m.json")
    name = os.fsdecode(b"caf\xe9.jpg")  # a Latin-1 file name, as listed by os
    fileio.write_json(path, {"n": np.int64(3), "x": np.float32(0.5), "t": (1, 2),
                             "name": name, "uni": "고양이"})
    back = json.loads(open(path, encoding="utf-8").read())
    assert back == {"n": 3, "x": 0.5, "t": [1, 2], "name": name, "uni": "고양이"}
    assert fileio.read_json(path) == back
    assert fileio.read_json(str(tmp_path / "missing.json")) is None


def test_remote_paths_are_told_apart():
    assert fileio.is_remote("gs://bucket/a") and not fileio.is_remote("/data/a")
    assert fileio.join("gs://bucket/", "/runs", "m") == "gs://bucket/runs/m"
    assert fileio.normpath("gs://b//x") == "gs://b//x"
    assert fileio.normpath("/a//b/../c") == "/a/c"
    assert fileio.tf_path(os.fsdecode(b"/x/caf\xe9")) == b"/x/caf\xe9"
