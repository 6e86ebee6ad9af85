"""Tests for catdog.scan.listing: the folder walker and class folders."""

import os

import keras
import pytest
import tensorflow as tf

import helpers
from catdog import decode
from catdog import scan


def test_index_matches_keras_image_dataset_from_directory(tmp_path):
    root = tmp_path / "data"
    helpers.write_tree(root, {
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
    written = helpers.write_tree(root, {"cats": ["jpeg"], "dogs": ["png"]})
    for name in (".DS_Store", "Thumbs.db", "desktop.ini", "._photo_0.jpg", ".hidden.jpg",
                 ".thumbnails/x.jpg", "__MACOSX/._y.jpg", "notes.txt", "photo.webp",
                 "holiday.HEIC"):
        helpers.write_jpeg(root / "cats" / name)
    for name in (".git/x.jpg", "__MACOSX/cats/a.jpg"):  # Not class folders.
        helpers.write_jpeg(root / name)

    paths, labels, class_names = scan.list_image_files(root)
    assert class_names == ["cats", "dogs"]
    assert paths == written["cats"] + written["dogs"]

    report = scan.scan_directory(root, progress=False)
    ignored = sorted(os.path.basename(p) for p in report.ignored_files)
    assert ignored == ["holiday.HEIC", "notes.txt", "photo.webp"]


def test_class_names_set_label_order_and_subset(tmp_path):
    root = tmp_path / "data"
    written = helpers.write_tree(
        root, {"cats": ["jpeg"], "dogs": ["jpeg", "png"], "birds": ["png"]})
    paths, labels, class_names = scan.list_image_files(root, class_names=["dogs", "cats"])
    assert class_names == ["dogs", "cats"]
    assert paths == sorted(written["dogs"]) + written["cats"]
    assert labels == [0, 0, 1]


def test_unknown_class_name_is_named_with_the_folders_found(tmp_path):
    root = tmp_path / "data"
    helpers.write_tree(root, {"cats": ["jpeg"], "dogs": ["jpeg"]})
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
    helpers.write_tree(root, {"cats": ["jpeg"]})
    if case == "missing":
        root = tmp_path / "nowhere"
    elif case == "file":
        root = root / "cats" / "photo_0.jpg"
    elif case == "empty_class":
        os.makedirs(root / "dogs")
        helpers.write_text(root / "dogs" / "readme.txt")
    with pytest.raises(ValueError, match=pattern):
        scan.list_image_files(root)


def test_korean_file_and_folder_names_work_through_tf_data(tmp_path):
    root = tmp_path / "데이터"
    helpers.write_jpeg(root / "고양이" / "사진.jpg")
    helpers.write_png(root / "개" / "강아지 사진.png")
    paths, labels, class_names = scan.list_image_files(root)
    assert class_names == sorted(["고양이", "개"])
    assert all(c.ok for c in scan.check_files(paths))

    dataset = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda p: decode.decode_and_resize(tf.io.read_file(p), (8, 8)))
    assert [image.shape for image in dataset.as_numpy_iterator()] == [(8, 8, 3)] * 2


def test_file_name_that_is_not_utf8_is_usable_through_fsencode(tmp_path):
    root = tmp_path / "data"
    helpers.write_tree(root, {"cats": ["jpeg"], "dogs": ["jpeg"]})
    # "사진" in the cp949 code page, as unzipping a Windows archive leaves it.
    name = os.fsencode(root / "dogs") + b"/\xbb\xe7\xc1\xf8.jpg"
    with open(name, "wb") as f:
        f.write(helpers.jpeg_bytes("cp949"))

    paths, _, _ = scan.list_image_files(root)
    assert os.fsdecode(name) in paths
    assert all(c.ok for c in scan.check_files(paths))
    # str paths with undecodable bytes need os.fsencode before TensorFlow.
    dataset = tf.data.Dataset.from_tensor_slices([os.fsencode(p) for p in paths])
    assert len(list(dataset.map(tf.io.read_file))) == 3


def test_follow_links_descends_into_symlinked_folders_only_when_asked(tmp_path):
    root = tmp_path / "data"
    written = helpers.write_tree(root, {"cats": ["jpeg"], "dogs": ["jpeg"]})
    helpers.write_png(tmp_path / "elsewhere" / "linked.png")
    os.symlink(tmp_path / "elsewhere", root / "cats" / "more")

    assert scan.list_image_files(root)[0] == written["cats"] + written["dogs"]
    followed = scan.list_image_files(root, follow_links=True)[0]
    assert followed[1] == str(root / "cats" / "more" / "linked.png")


def test_paths_with_a_scheme_go_through_tf_io_gfile(tmp_path):
    root = f"ram://scan-test-{tmp_path.name}"
    try:
        for path, content in [("cats/a.jpg", helpers.jpeg_bytes("a")),
                              ("cats/sub/b.png", helpers.png_bytes("b")),
                              ("dogs/c.jpg", b""), ("dogs/d.jpg", helpers.jpeg_bytes("d"))]:
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


def test_follow_links_stops_at_cycles_and_lists_each_folder_once(tmp_path):
    root = tmp_path / "d"
    written = helpers.write_tree(root, {"cats": ["jpeg"], "dogs": ["png"]})
    os.symlink(root / "cats", root / "cats" / "loop")  # a folder linking to itself
    os.symlink(root, root / "dogs" / "up")  # to an ancestor
    paths, labels, names = scan.list_image_files(root, follow_links=True)
    assert names == ["cats", "dogs"]
    assert paths == written["cats"] + written["dogs"]
    assert labels == [0, 1]


def test_follow_links_flag_reaches_the_folder_index(tmp_path):
    from catdog import config as C  # pylint: disable=import-outside-toplevel
    from catdog import data  # pylint: disable=import-outside-toplevel
    root = tmp_path / "d"
    helpers.write_tree(root, {"cats": ["jpeg"] * 4, "dogs": ["png"] * 4})
    helpers.write_tree(tmp_path / "elsewhere", {"more": ["jpeg"] * 2})
    os.symlink(tmp_path / "elsewhere" / "more", root / "cats" / "more")
    for follow, count in ((False, 8), (True, 10)):
        cfg = C.DataConfig(train_dir=str(root), validation_split=0.25, image_size=(16, 16),
                           follow_links=follow)
        index = data.index_data(cfg, progress=False)
        assert len(index.train) + len(index.val) == count
