"""Tests for catdog.scan: indexing, header sniffing, file checks, the scan
cache, the folder report and scripts/scan_data.py.

Every image is generated (tests/imagegen.py) into a temporary folder; the
scan cache goes to a per-test folder through $CATDOG_CACHE_DIR.
"""

import io
import json
import logging
import os
import resource
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image
import tensorflow as tf

import imagegen
from catdog import decode
from catdog import scan
from conftest import tree_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV_DATA = os.path.join(REPO, "..", "shared", "data", "catdog-dev")
SIZE = (imagegen.WIDTH, imagegen.HEIGHT)


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

    def spy(contents, image_size):
        calls.append(image_size)
        return real(contents, image_size)

    monkeypatch.setattr(decode, "decode_and_resize", spy)
    return calls


def _write_kind(folder, kind):
    if kind in imagegen.VALID:
        name, writer = imagegen.VALID[kind]
    else:
        name, writer, _ = imagegen.BAD[kind]
    return writer(os.path.join(folder, name))


# --------------------------------------------------------------------------
# list_image_files
# --------------------------------------------------------------------------


def test_index_matches_keras_image_dataset_from_directory(tmp_path):
    root = tmp_path / "data"
    imagegen.write_tree(root, {
        "dogs": ["bmp", "gif", "zz/jpeg", "a b/png"],
        "cats": ["jpeg", "upper_case_ext", "nested/mixed_case_ext",
                 "nested/deeper/png", "a/jpeg"],
    })
    paths, labels, class_names = scan.list_image_files(str(root))
    dataset = keras.utils.image_dataset_from_directory(
        str(root), shuffle=False, batch_size=None, image_size=(8, 8), verbose=False)
    keras_labels = [int(label) for _, label in dataset.as_numpy_iterator()]

    assert class_names == dataset.class_names == ["cats", "dogs"]
    assert paths == dataset.file_paths
    assert labels == keras_labels
    assert labels == [0] * 5 + [1] * 4
    assert any("nested/deeper" in p for p in paths)  # Nested: top-level class.


def test_index_ignores_litter_hidden_files_and_other_extensions(tmp_path):
    root = tmp_path / "data"
    written = imagegen.write_tree(root, {"cats": ["jpeg"], "dogs": ["png"]})
    for name in (".DS_Store", "Thumbs.db", "desktop.ini", "._photo_0.jpg", ".hidden.jpg",
                 ".thumbnails/x.jpg", "__MACOSX/._y.jpg", "notes.txt", "photo.webp",
                 "holiday.HEIC"):
        imagegen.write_jpeg(root / "cats" / name)
    for name in (".git/x.jpg", "__MACOSX/cats/a.jpg"):  # Not class folders.
        imagegen.write_jpeg(root / name)

    paths, labels, class_names = scan.list_image_files(root)
    assert class_names == ["cats", "dogs"]
    assert paths == written["cats"] + written["dogs"]

    report = scan.scan_directory(root, progress=False)
    ignored = sorted(os.path.basename(p) for p in report.ignored_files)
    assert ignored == ["holiday.HEIC", "notes.txt", "photo.webp"]


def test_class_names_set_label_order_and_subset(tmp_path):
    root = tmp_path / "data"
    written = imagegen.write_tree(
        root, {"cats": ["jpeg"], "dogs": ["jpeg", "png"], "birds": ["png"]})
    paths, labels, class_names = scan.list_image_files(root, class_names=["dogs", "cats"])
    assert class_names == ["dogs", "cats"]
    assert paths == sorted(written["dogs"]) + written["cats"]
    assert labels == [0, 0, 1]


def test_unknown_class_name_is_named_with_the_folders_found(tmp_path):
    root = tmp_path / "data"
    imagegen.write_tree(root, {"cats": ["jpeg"], "dogs": ["jpeg"]})
    with pytest.raises(ValueError, match=r"'dog' is not a subfolder.*\['cats', 'dogs'\]"):
        scan.list_image_files(root, class_names=["cats", "dog"])
    with pytest.raises(ValueError, match="more than once"):
        scan.list_image_files(root, class_names=["cats", "cats"])


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"'.*nowhere' does not exist"),
    ("file", r"is a file, not a folder"),
    ("one_class", r"at least 2; found 1 class folder\(s\): \['cats'\]"),
    ("empty_class", r"class folder '.*dogs' has no image files"),
])
def test_index_errors_name_the_problem(tmp_path, case, pattern):
    root = tmp_path / "data"
    imagegen.write_tree(root, {"cats": ["jpeg"]})
    if case == "missing":
        root = tmp_path / "nowhere"
    elif case == "file":
        root = root / "cats" / "photo_0.jpg"
    elif case == "empty_class":
        os.makedirs(root / "dogs")
        imagegen.write_text(root / "dogs" / "readme.txt")
    with pytest.raises(ValueError, match=pattern):
        scan.list_image_files(root)


def test_korean_file_and_folder_names_work_through_tf_data(tmp_path):
    root = tmp_path / "데이터"
    imagegen.write_jpeg(root / "고양이" / "사진.jpg")
    imagegen.write_png(root / "개" / "강아지 사진.png")
    paths, labels, class_names = scan.list_image_files(root)
    assert class_names == sorted(["고양이", "개"])
    assert all(c.ok for c in scan.check_files(paths))

    dataset = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda p: decode.decode_and_resize(tf.io.read_file(p), (8, 8)))
    assert [image.shape for image in dataset.as_numpy_iterator()] == [(8, 8, 3)] * 2


def test_file_name_that_is_not_utf8_is_usable_through_fsencode(tmp_path):
    root = tmp_path / "data"
    imagegen.write_tree(root, {"cats": ["jpeg"], "dogs": ["jpeg"]})
    # "사진" in the cp949 code page, as unzipping a Windows archive leaves it.
    name = os.fsencode(root / "dogs") + b"/\xbb\xe7\xc1\xf8.jpg"
    with open(name, "wb") as f:
        f.write(imagegen.jpeg_bytes("cp949"))

    paths, _, _ = scan.list_image_files(root)
    assert os.fsdecode(name) in paths
    assert all(c.ok for c in scan.check_files(paths))
    # str paths with undecodable bytes need os.fsencode before TensorFlow.
    dataset = tf.data.Dataset.from_tensor_slices([os.fsencode(p) for p in paths])
    assert len(list(dataset.map(tf.io.read_file))) == 3


def test_follow_links_descends_into_symlinked_folders_only_when_asked(tmp_path):
    root = tmp_path / "data"
    written = imagegen.write_tree(root, {"cats": ["jpeg"], "dogs": ["jpeg"]})
    imagegen.write_png(tmp_path / "elsewhere" / "linked.png")
    os.symlink(tmp_path / "elsewhere", root / "cats" / "more")

    assert scan.list_image_files(root)[0] == written["cats"] + written["dogs"]
    followed = scan.list_image_files(root, follow_links=True)[0]
    assert followed[1] == str(root / "cats" / "more" / "linked.png")


def test_paths_with_a_scheme_go_through_tf_io_gfile(tmp_path):
    root = f"ram://scan-test-{tmp_path.name}"
    try:
        for path, content in [("cats/a.jpg", imagegen.jpeg_bytes("a")),
                              ("cats/sub/b.png", imagegen.png_bytes("b")),
                              ("dogs/c.jpg", b""), ("dogs/d.jpg", imagegen.jpeg_bytes("d"))]:
            tf.io.gfile.makedirs(os.path.dirname(f"{root}/{path}"))
            with tf.io.gfile.GFile(f"{root}/{path}", "wb") as f:
                f.write(content)
        paths, labels, class_names = scan.list_image_files(root)
        assert paths == [f"{root}/cats/a.jpg", f"{root}/cats/sub/b.png",
                         f"{root}/dogs/c.jpg", f"{root}/dogs/d.jpg"]
        assert labels == [0, 0, 1, 1]
        checks = scan.check_files(paths)
        assert [c.ok for c in checks] == [True, True, False, True]
        assert checks[2].reason == "empty file (0 bytes)"
    finally:
        tf.io.gfile.rmtree(root)


# --------------------------------------------------------------------------
# Header sniffing
# --------------------------------------------------------------------------

# The format the bytes of each valid kind really are (not the extension).
_TRUE_FORMAT = {"png": "png", "gif": "gif", "bmp": "bmp", "gray_png": "png",
                "rgba_png": "png", "palette_png": "png", "png16": "png",
                "png_named_jpg": "png", "webp_named_jpg": "webp"}


@pytest.mark.parametrize("kind", sorted(imagegen.VALID))
def test_sniff_reads_format_from_magic_bytes_and_size(tmp_path, kind):
    path = _write_kind(tmp_path, kind)
    header = scan.sniff_header(path)
    expected = _TRUE_FORMAT.get(kind, "jpeg")
    assert (header.format, header.width, header.height) == (expected,) + SIZE
    assert header.problem is None
    assert header.size_bytes == os.path.getsize(path)


@pytest.mark.skipif(not os.path.isdir(DEV_DATA), reason="no real photos on this machine")
def test_sniff_agrees_with_pillow_on_real_photos():
    paths = sorted(os.path.join(folder, name) for folder, _, files in os.walk(DEV_DATA)
                   for name in files)
    assert paths
    for path in paths:
        header = scan.sniff_header(path)
        with Image.open(path) as image:
            assert (header.width, header.height) == image.size, path
        assert header.problem is None, path


class _CountingFile(io.BytesIO):
    def __init__(self, content):
        super().__init__(content)
        self.bytes_read = 0

    def read(self, size=-1):
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk


def test_sniff_reads_only_head_and_tail_of_a_large_file():
    noise = np.random.RandomState(0).randint(0, 256, (1200, 1600, 3), dtype=np.uint8)
    content = tf.io.encode_jpeg(noise, quality=95).numpy()
    assert len(content) > 1_000_000
    handle = _CountingFile(content)
    header = scan._sniff_open(handle, len(content))
    assert (header.format, header.width, header.height, header.problem) == (
        "jpeg", 1600, 1200, None)
    assert handle.bytes_read <= 64 * 1024 + 4 * 1024


@pytest.mark.parametrize("kind", ["jpeg", "progressive_jpeg", "png"])
def test_every_truncation_is_rejected_by_the_sniffer_and_by_tensorflow(tmp_path, kind):
    # The module's truncation policy rests on both halves of this test.
    with open(_write_kind(tmp_path, kind), "rb") as f:
        content = f.read()
    for cut in range(1, len(content), 3):
        prefix = content[:cut]
        assert scan._sniff_open(io.BytesIO(prefix), cut).problem, (kind, cut)
        with pytest.raises(tf.errors.InvalidArgumentError):
            tf.io.decode_image(prefix, channels=3, expand_animations=False)


@pytest.mark.parametrize("content, reason", [
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "unsupported format 'heic'"),
    (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", "unsupported format 'avif'"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "unsupported format 'pdf'"),
    (b"\xef\xbb\xbf<svg xmlns='http://www.w3.org/2000/svg'/>",
     "not an image: starts with \"<svg xmlns='http://www.w3.org/2000/svg'/...\""),
    (b"PK\x03\x04\x14\x00\x00\x00", "not an image: unrecognised header bytes 50 4b 03 04"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "truncated JPEG: file ends inside its header"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "truncated PNG: file ends inside its header"),
])
def test_sniff_explains_unusable_headers(content, reason):
    header = scan._sniff_open(io.BytesIO(content), len(content))
    assert header.problem.startswith(reason)


# --------------------------------------------------------------------------
# check_file / check_files
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(imagegen.VALID))
def test_valid_quirky_images_pass_and_decode_eagerly_and_in_tf_data(tmp_path, kind):
    path = _write_kind(tmp_path, kind)
    check = scan.check_file(path)
    assert check.ok and check.reason is None, check
    assert (check.width, check.height, check.size_bytes) == SIZE + (os.path.getsize(path),)

    eager = decode.decode_and_resize(tf.io.read_file(path), (20, 20))
    assert (eager.shape, eager.dtype) == ((20, 20, 3), tf.uint8)
    dataset = tf.data.Dataset.from_tensors(path).map(
        lambda p: decode.decode_and_resize(tf.io.read_file(p), (20, 20)))
    in_graph = next(dataset.as_numpy_iterator())
    np.testing.assert_array_equal(in_graph, eager.numpy())


@pytest.mark.parametrize("kind", sorted(imagegen.BAD))
def test_bad_files_fail_with_their_reason(tmp_path, kind):
    name, writer, reason = imagegen.BAD[kind]
    path = writer(tmp_path / name)
    check = scan.check_file(path)
    assert not check.ok
    assert check.reason.startswith(reason), check.reason
    assert check.path == path


def test_check_files_keeps_input_order_and_agrees_with_check_file(tmp_path):
    paths = [_write_kind(tmp_path, kind) for kind in sorted(imagegen.VALID)]
    paths += [_write_kind(tmp_path, kind) for kind in sorted(imagegen.BAD)]
    paths = [paths[i] for i in np.random.RandomState(1).permutation(len(paths))]
    checks = scan.check_files(paths, use_cache=False, num_parallel=2)
    assert [c.path for c in checks] == paths
    assert checks == [scan.check_file(p) for p in paths]
    assert sum(c.ok for c in checks) == len(imagegen.VALID)
    assert scan.check_files([]) == []


def test_decompression_bombs_are_rejected_from_the_header_alone(tmp_path, scan_decode_calls):
    jpeg_bomb = imagegen.write_jpeg_bomb(tmp_path / "bomb.jpg")
    # A complete, valid 24000x24000 PNG: 1.7 GB of RGB if it were decoded.
    png_bomb = imagegen.write_png_bomb(tmp_path / "real_bomb.png")
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
    image = decode.decode_and_resize(tf.constant(imagegen.png_bomb_bytes(300, 200)), (10, 10))
    assert image.shape == (10, 10, 3)


def test_max_pixels_is_inclusive_and_validated(tmp_path):
    path = imagegen.write_jpeg(tmp_path / "a.jpg")
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
    paths = [_write_kind(tmp_path, k) for k in ("jpeg", "png", "empty", "corrupt_png")]
    seen = []
    scan.check_files(paths, use_cache=False, progress=lambda done, total: seen.append(
        (done, total)))
    assert seen[-1] == (4, 4)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_progress_falls_back_to_plain_lines_without_tqdm(tmp_path, monkeypatch, capsys):
    paths = [_write_kind(tmp_path, k) for k in ("jpeg", "png", "empty")]
    monkeypatch.setitem(sys.modules, "tqdm", None)  # Makes "import tqdm" fail.
    scan.check_files(paths, use_cache=False, progress=True)
    assert "checking images: 3/3 files" in capsys.readouterr().err


# --------------------------------------------------------------------------
# Scan cache
# --------------------------------------------------------------------------


def _cache_files(cache_dir):
    return sorted(cache_dir.glob("scan-*.json")) if cache_dir.exists() else []


def test_cache_skips_the_decode_on_a_second_run(tmp_path, scan_cache_dir, scan_decode_calls):
    root = tmp_path / "data"
    written = imagegen.write_tree(root, {"cats": ["jpeg", "empty"], "dogs": ["png"]})
    paths = written["cats"] + written["dogs"]

    first = scan.check_files(paths)
    assert scan_decode_calls and len(_cache_files(scan_cache_dir)) == 1
    scan_decode_calls.clear()
    second = scan.check_files(paths)
    assert scan_decode_calls == []
    assert second == first


def test_cache_rechecks_changed_files_and_other_max_pixels(
        tmp_path, scan_cache_dir, scan_decode_calls):
    path = imagegen.write_jpeg(tmp_path / "data" / "a.jpg")
    assert scan.check_files([path])[0].ok

    os.utime(path, ns=(1, 1))  # Same bytes, new mtime: checked again.
    scan_decode_calls.clear()
    assert scan.check_files([path])[0].ok
    assert scan_decode_calls

    imagegen.write_truncated_jpeg(path)
    assert scan.check_files([path])[0].reason.startswith("truncated JPEG")
    imagegen.write_jpeg(path)
    assert not scan.check_files([path], max_pixels=10)[0].ok
    assert scan.check_files([path])[0].ok


@pytest.mark.parametrize("garbage", [b"\x00\xff not json", b"[1, 2]",
                                     b'{"schema": 1, "entries": []}'])
def test_damaged_cache_is_ignored_and_rewritten(tmp_path, scan_cache_dir, garbage):
    paths = [imagegen.write_jpeg(tmp_path / "data" / "a.jpg"),
             imagegen.write_empty(tmp_path / "data" / "b.jpg")]
    expected = scan.check_files(paths, use_cache=False)
    scan.check_files(paths)
    (cache_file,) = _cache_files(scan_cache_dir)
    cache_file.write_bytes(garbage)

    assert scan.check_files(paths) == expected
    assert json.loads(cache_file.read_text())["schema"] == 1
    assert scan.check_files(paths) == expected


def test_damaged_cache_entries_are_ignored(tmp_path, scan_cache_dir):
    path = imagegen.write_jpeg(tmp_path / "data" / "a.jpg")
    scan.check_files([path])
    (cache_file,) = _cache_files(scan_cache_dir)
    content = json.loads(cache_file.read_text())
    (key,) = content["entries"]
    content["entries"][key] = ["nonsense"]
    cache_file.write_text(json.dumps(content))
    assert scan.check_files([path])[0].ok


def test_cache_is_never_written_inside_the_data_folder(tmp_path, caplog):
    root = tmp_path / "data"
    written = imagegen.write_tree(root, {"cats": ["jpeg"], "dogs": ["png"]})
    before = tree_state(root)
    with caplog.at_level(logging.WARNING, logger="catdog.scan"):
        checks = scan.check_files(written["cats"] + written["dogs"],
                                  cache_dir=str(root / "cats" / ".cache"))
    assert all(c.ok for c in checks)
    assert tree_state(root) == before
    assert "inside the data folder" in caplog.text


def test_cache_location_follows_env_var_and_argument(tmp_path, scan_cache_dir):
    path = imagegen.write_jpeg(tmp_path / "data" / "a.jpg")
    assert scan.default_cache_dir() == str(scan_cache_dir)
    scan.check_files([path])
    assert len(_cache_files(scan_cache_dir)) == 1
    scan.check_files([path], cache_dir=str(tmp_path / "mine"))
    assert len(_cache_files(tmp_path / "mine")) == 1
    scan.check_files([path], cache_dir=str(tmp_path / "unused"), use_cache=False)
    assert not (tmp_path / "unused").exists()


# --------------------------------------------------------------------------
# scan_directory
# --------------------------------------------------------------------------


@pytest.fixture
def scan_messy_tree(tmp_path):
    """cats: 8 usable + 2 bad; dogs: 4 usable (one a copy of a cat) + 1
    within-class copy; valid/: a leaked copy of a cat."""
    root = tmp_path / "training_set"
    written = imagegen.write_tree(root, {
        "cats": ["jpeg"] * 5 + ["png", "gif", "nested/bmp", "empty", "truncated_jpeg"],
        "dogs": ["jpeg", "jpeg", "png"],
    })
    shutil.copy(written["cats"][0], root / "dogs" / "looks_like_a_dog.jpg")
    shutil.copy(written["dogs"][0], root / "dogs" / "copy_of_dog.jpg")
    os.makedirs(tmp_path / "test_set" / "cats")
    shutil.copy(written["cats"][1], tmp_path / "test_set" / "cats" / "leaked.jpg")
    imagegen.write_jpeg(tmp_path / "test_set" / "cats" / "fine.jpg")
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
    imagegen.write_tree(root, {"train": ["cats/jpeg", "dogs/jpeg"],
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
