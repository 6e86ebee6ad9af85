"""Tests for catdog.scan.check: the check training runs (header, pixel limit,
the real decode), in order, with progress; and the fixtures the other scan
tests share.

Every image is generated (tests/helpers.py) into a temporary folder; the
check cache goes to a per-test folder through $CATDOG_CACHE_DIR.
"""

import os
import resource
import sys

import numpy as np
import pytest
import tensorflow as tf

import helpers
from catdog import decode
from catdog import scan


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV_DATA = os.path.join(REPO, "..", "shared", "data", "catdog-dev")
SIZE = (helpers.WIDTH, helpers.HEIGHT)


@pytest.fixture(autouse=True)
def scan_cache_dir(tmp_path, monkeypatch):
    """Sends the default scan cache to a per-test folder outside the data."""
    cache = tmp_path / "scan-cache"
    monkeypatch.setenv("CATDOG_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def scan_decode_calls(monkeypatch):
    """Counts calls of catdog.decode.decode_and_resize made by the scan.

    An eager decode counts once per file; a tf.data map counts once per
    trace, so zero calls means nothing was decoded at all.
    """
    calls = []
    real = decode.decode_and_resize

    def spy(contents, image_size, *options, **kwargs):
        calls.append(image_size)
        return real(contents, image_size, *options, **kwargs)

    monkeypatch.setattr(decode, "decode_and_resize", spy)
    return calls


def write_kind(folder, kind):
    if kind in helpers.VALID:
        name, writer = helpers.VALID[kind]
    else:
        name, writer, _ = helpers.BAD[kind]
    return writer(os.path.join(folder, name))


@pytest.mark.parametrize("kind", sorted(helpers.VALID))
def test_valid_quirky_images_pass_and_decode_eagerly_and_in_tf_data(tmp_path, kind):
    path = write_kind(tmp_path, kind)
    check = scan.check_file(path)
    assert check.ok and check.reason is None, check
    assert (check.width, check.height, check.size_bytes) == SIZE + (os.path.getsize(path),)

    eager = decode.decode_and_resize(tf.io.read_file(path), (20, 20))
    assert (eager.shape, eager.dtype) == ((20, 20, 3), tf.uint8)
    dataset = tf.data.Dataset.from_tensors(path).map(
        lambda p: decode.decode_and_resize(tf.io.read_file(p), (20, 20)))
    in_graph = next(dataset.as_numpy_iterator())
    np.testing.assert_array_equal(in_graph, eager.numpy())


@pytest.mark.parametrize("kind", sorted(helpers.BAD))
def test_bad_files_fail_with_their_reason(tmp_path, kind):
    name, writer, reason = helpers.BAD[kind]
    path = writer(tmp_path / name)
    check = scan.check_file(path)
    assert not check.ok
    assert check.reason.startswith(reason), check.reason
    assert check.path == path


def test_check_files_keeps_input_order_and_agrees_with_check_file(tmp_path):
    paths = [write_kind(tmp_path, kind) for kind in sorted(helpers.VALID)]
    paths += [write_kind(tmp_path, kind) for kind in sorted(helpers.BAD)]
    paths = [paths[i] for i in np.random.RandomState(1).permutation(len(paths))]
    checks = scan.check_files(paths, use_cache=False, num_parallel=2)
    assert [c.path for c in checks] == paths
    assert checks == [scan.check_file(p) for p in paths]
    assert sum(c.ok for c in checks) == len(helpers.VALID)
    assert scan.check_files([]) == []


def test_decompression_bombs_are_rejected_from_the_header_alone(tmp_path, scan_decode_calls):
    jpeg_bomb = helpers.write_jpeg_bomb(tmp_path / "bomb.jpg")
    # A complete, valid 24000x24000 PNG: 1.7 GB of RGB if it were decoded.
    png_bomb = helpers.write_png_bomb(tmp_path / "real_bomb.png")
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB

    checks = scan.check_files([jpeg_bomb, png_bomb], use_cache=False)
    checks.append(scan.check_file(png_bomb))

    peak_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert scan_decode_calls == []
    assert peak_growth_mb < 200
    for check in checks:
        assert check.reason == ("image is 24000x24000 (576.0 MP), above "
                                "max_pixels=89478485; raise --max_pixels to use it")
        assert (check.ok, check.width, check.height) == (False, 24000, 24000)


def test_png_bomb_generator_writes_a_valid_png():
    image = decode.decode_and_resize(tf.constant(helpers.png_bomb_bytes(300, 200)), (10, 10))
    assert image.shape == (10, 10, 3)


def test_max_pixels_is_inclusive_and_validated(tmp_path):
    path = helpers.write_jpeg(tmp_path / "a.jpg")
    pixels = SIZE[0] * SIZE[1]
    assert scan.check_file(path, max_pixels=pixels).ok
    below = scan.check_files([path], max_pixels=pixels - 1)[0]
    assert not below.ok and f"above max_pixels={pixels - 1};" in below.reason
    for bad in (0, -5, 1.5, True, "100"):
        with pytest.raises(ValueError, match=r"max_pixels must be a positive integer"):
            scan.check_files([path], max_pixels=bad)


def test_unreadable_file_is_reported_and_not_cached(tmp_path, scan_cache_dir):
    dangling = tmp_path / "gone.jpg"
    os.symlink(tmp_path / "missing-target.jpg", dangling)
    check = scan.check_files([str(dangling)])[0]
    assert not check.ok and check.reason.startswith("cannot read file:")
    assert not scan_cache_dir.exists()


def test_progress_callback_counts_every_file(tmp_path):
    paths = [write_kind(tmp_path, k) for k in ("jpeg", "png", "empty", "corrupt_png")]
    seen = []
    scan.check_files(paths, use_cache=False, progress=lambda done, total: seen.append(
        (done, total)))
    assert seen[-1] == (4, 4)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_progress_falls_back_to_plain_lines_without_tqdm(tmp_path, monkeypatch, capsys):
    paths = [write_kind(tmp_path, k) for k in ("jpeg", "png", "empty")]
    monkeypatch.setitem(sys.modules, "tqdm", None)  # Makes "import tqdm" fail.
    scan.check_files(paths, use_cache=False, progress=True)
    assert "checking images: 3/3 files" in capsys.readouterr().err
