"""Tests for catdog.image_paths: files and folders a user names."""

import os

from catdog import image_paths


def _write(path, contents):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(contents)
    return str(path)


def test_expand_paths_walks_folders_and_keeps_only_images(tmp_path):
    for name in ["b.JPG", "a.jpeg", "sub/c.Png", "sub/deeper/d.gif", "e.bmp",
                 ".DS_Store", "notes.txt", "._a.jpg", ".hidden/x.jpg", "sub/Thumbs.db"]:
        _write(tmp_path / name, b"x")
    explicit = _write(tmp_path / "other" / "photo.webp", b"x")
    empty = tmp_path / "empty"
    empty.mkdir()

    entries = image_paths.expand_paths(
        [tmp_path / "a.jpeg", tmp_path, explicit, empty, tmp_path / "missing.jpg"])

    assert entries[:6] == [
        (str(tmp_path / "a.jpeg"), None),  # explicit first; not repeated later
        (str(tmp_path / "b.JPG"), None),
        (str(tmp_path / "e.bmp"), None),
        (str(tmp_path / "sub" / "c.Png"), None),
        (str(tmp_path / "sub" / "deeper" / "d.gif"), None),
        (explicit, None),  # named explicitly: kept whatever its extension
    ]
    assert entries[6][0] == str(empty) and "no image files" in entries[6][1]
    assert entries[7] == (str(tmp_path / "missing.jpg"), "no such file or folder")
    assert len(entries) == 8


def test_expand_paths_walks_a_folder_with_the_rules_of_training(tmp_path):
    """predict and the augmentation pictures (both call expand_paths) list a folder exactly
    as training's scan does: same extensions, same ignored litter, hidden and
    __MACOSX folders skipped, symlinked folders not followed."""
    from catdog import scan  # pylint: disable=import-outside-toplevel
    root = tmp_path / "photos"
    for name in ["cats/a.jpg", "cats/sub/b.PNG", "dogs/c.jpeg", "dogs/d.gif",
                 "dogs/e.bmp",
                 # Litter training skips.
                 "cats/__MACOSX/a.jpg", "dogs/__macosx/sub/f.jpg", "cats/._a.jpg",
                 "cats/.DS_Store", "dogs/Thumbs.db", "dogs/desktop.ini",
                 "dogs/.cache/g.png", "cats/notes.txt", "dogs/h.webp"]:
        _write(root / name, b"x")
    elsewhere = tmp_path / "elsewhere"
    _write(elsewhere / "linked.jpg", b"x")
    os.symlink(elsewhere, root / "cats" / "link")

    training, _, _ = scan.list_image_files(str(root))
    predicted = [path for path, error in image_paths.expand_paths([root]) if error is None]
    assert predicted == training
    assert not any("macosx" in p.lower() or "/." in p or "link" in p for p in predicted)
    assert len(predicted) == 5
