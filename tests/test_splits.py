"""The train/validation split of one folder."""

import os

import pytest

from catdog import data
from catdog import splits
from helpers import make_class_folder
from test_sources_folder import _data_config


def _listing(root, counts):
    """Paths ``root/<class>/<class>.<i>.jpg`` and labels (no files needed)."""
    paths, labels = [], []
    for label, (name, n) in enumerate(counts.items()):
        for i in range(n):
            paths.append(os.path.join(root, name, f"{name}.{i}.jpg"))
            labels.append(label)
    return paths, labels


def _sides(split):
    train, val = split
    return {**{p: "train" for p in train.paths}, **{p: "val" for p in val.paths}}


SPLIT_CASES = [({"cats": 7, "dogs": 12}, 0.2), ({"a": 30, "b": 31, "c": 5}, 0.35),
               ({"cats": 101, "dogs": 40}, 0.25), ({"cats": 3, "dogs": 17}, 0.5)]


@pytest.mark.parametrize("counts,fraction", SPLIT_CASES)
def test_validation_split_is_stratified(counts, fraction):
    """Each class holds out the same fraction of its own files (within one file),
    as ImageDataGenerator's validation_split did per class folder."""
    paths, labels = _listing("/data/train", counts)
    for seed in range(6):
        train, val = splits.split_files(paths, labels, fraction, seed)
        for label, n in enumerate(counts.values()):
            n_val = val.labels.count(label)
            assert abs(n_val - fraction * n) < 1, (seed, label, n_val, n)
            assert train.labels.count(label) == n - n_val
        assert not set(train.paths) & set(val.paths)
        assert sorted(train.paths + val.paths) == sorted(paths)
        # Labels stay aligned with their files.
        truth = dict(zip(paths, labels))
        assert all(truth[p] == lab for p, lab in
                   zip(val.paths + train.paths, val.labels + train.labels))


@pytest.mark.parametrize("counts,fraction", SPLIT_CASES)
def test_validation_split_is_stable_when_one_file_comes_or_goes(counts, fraction):
    """Adding or removing one file moves at most one other file between
    training and validation, for every seed and class size tried."""
    paths, labels = _listing("/data/train", counts)
    first = list(counts)[0]
    for seed in range(5):
        before = _sides(splits.split_files(paths, labels, fraction, seed))
        # One new file, in the first class (its name sorts among the others).
        added = os.path.join("/data/train", first, f"{first}.5a.jpg")
        cut = labels.count(0)
        grown = _sides(splits.split_files(paths[:cut] + [added] + paths[cut:],
                                          labels[:cut] + [0] + labels[cut:], fraction, seed))
        moved = [p for p in paths if grown[p] != before[p]]
        assert len(moved) <= 1, (seed, "added", moved)
        # Each file removed in turn (a validation one and a training one at least).
        for gone in {min(p for p in paths if before[p] == "val"),
                     min(p for p in paths if before[p] == "train"), paths[-1]}:
            i = paths.index(gone)
            shrunk = _sides(splits.split_files(paths[:i] + paths[i + 1:],
                                               labels[:i] + labels[i + 1:], fraction, seed))
            moved = [p for p in paths if p != gone and shrunk[p] != before[p]]
            assert len(moved) <= 1, (seed, "removed", gone, moved)


def test_validation_split_is_seeded_and_reproducible():
    paths, labels = _listing("/data/train", {"cats": 40, "dogs": 40})
    a = splits.split_files(paths, labels, 0.25, 7)
    b = splits.split_files(list(paths), list(labels), 0.25, 7)
    c = splits.split_files(paths, labels, 0.25, 8)
    assert a[1].paths == b[1].paths and a[0].paths == b[0].paths
    assert set(a[1].paths) != set(c[1].paths)
    # Files keep the listing order inside each split.
    assert a[1].paths == [p for p in paths if p in set(a[1].paths)]


def test_validation_split_follows_paths_relative_to_the_class_folder(tmp_path):
    """Moving the whole data folder elsewhere gives the same split, file by file."""
    import shutil  # pylint: disable=import-outside-toplevel
    root = make_class_folder(tmp_path / "here" / "photos", per_class=15)
    moved = str(tmp_path / "there" / "deeper" / "photos")
    shutil.copytree(root, moved)
    rel = lambda paths, base: [os.path.relpath(p, base) for p in paths]
    for seed in (1, 2):
        a = data.index_data(_data_config(root, validation_split=0.3, seed=seed))
        b = data.index_data(_data_config(moved, validation_split=0.3, seed=seed))
        assert rel(a.val.paths, root) == rel(b.val.paths, moved)
        assert rel(a.train.paths, root) == rel(b.train.paths, moved)
        assert b.val.labels == a.val.labels
