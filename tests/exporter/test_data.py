"""The data stage: ImageFolder reading on real CIFAR-10 files and clear errors on bad folders.

`cifar_root` is the tiny slice under tests/data/cifar10-tiny: 10 images per class and split.
"""

import numpy as np
import pytest
from PIL import Image

from exporter import data
from exporter.config import DataConfig
from exporter.data import DatasetError, read_image_folder


def _folder(tmp_path, classes=("a", "b"), per_class=3, size=(8, 8)):
    for c in classes:
        (tmp_path / "train" / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", size, (40 * i, 0, 0)).save(tmp_path / "train" / c / f"{i}.png")
    return tmp_path / "train"


def test_real_cifar_slice_reads_as_one_uint8_array(cifar_root):
    x, y, classes = read_image_folder(cifar_root / "test", per_class=5)
    assert x.dtype == np.uint8 and x.shape == (50, 3, 32, 32)
    assert classes[0] == "airplane" and len(classes) == 10
    assert np.bincount(y).tolist() == [5] * 10


def test_prepare_holds_out_calibration_images_disjoint_from_training(cifar_root, tmp_path):
    cfg = DataConfig(
        root=str(cifar_root),
        train_per_class=10,
        test_per_class=10,
        calibration_images=30,
        eval_every=4,
        eval_images=20,
    )
    data.prepare(cfg, tmp_path)
    ds = data.load(tmp_path)
    assert len(ds.train.labels) == 70 and len(ds.calib.labels) == 30 and len(ds.eval.labels) == 20
    train_rows = {row.tobytes() for row in ds.train.images}
    assert not any(row.tobytes() in train_rows for row in ds.calib.images)


def test_missing_folder_is_named_in_the_error(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "nope")):
        read_image_folder(tmp_path / "nope")


def test_empty_class_is_an_error(tmp_path):
    split = _folder(tmp_path)
    (split / "c").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        read_image_folder(split)


def test_unreadable_images_are_skipped_below_the_threshold(tmp_path):
    split = _folder(tmp_path, per_class=50)
    (split / "a" / "broken.png").write_bytes(b"not a png")
    x, y, _ = read_image_folder(split, max_bad_fraction=0.05)
    assert len(x) == 100


def test_unreadable_images_are_fatal_above_the_threshold(tmp_path):
    split = _folder(tmp_path, per_class=2)
    (split / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="unreadable"):
        read_image_folder(split, max_bad_fraction=0.01)


def test_prepare_draws_calibration_and_hold_out_images_from_test_outside_the_eval_subset(
    cifar_root, tmp_path
):
    cfg = DataConfig(
        root=str(cifar_root),
        train_per_class=5,
        test_per_class=10,
        calibration_images=10,
        calibration_test_images=30,
        holdout_images=20,
        eval_every=4,
        eval_images=25,
    )
    data.prepare(cfg, tmp_path)
    ds = data.load(tmp_path)
    assert len(ds.calib.labels) == 40 and len(ds.holdout.labels) == 20
    saved = np.load(tmp_path / "data.npz")
    evaluation, calib, holdout = (
        set(saved[k].tolist()) for k in ("eval_index", "calib_test_index", "holdout_index")
    )
    assert len(calib) == 30 and len(holdout) == 20
    assert not (evaluation & calib) and not (evaluation & holdout) and not (calib & holdout)
    xt, _, _ = read_image_folder(cifar_root / "test", per_class=10)
    assert np.array_equal(ds.holdout.images, xt[sorted(holdout)])


def test_asking_for_more_test_images_than_there_are_is_an_error(cifar_root, tmp_path):
    cfg = DataConfig(
        root=str(cifar_root),
        train_per_class=5,
        test_per_class=2,
        calibration_images=10,
        calibration_test_images=16,
        eval_every=4,
        eval_images=5,
    )
    with pytest.raises(DatasetError, match="cannot take 16"):
        data.prepare(cfg, tmp_path)


def _selection(cifar_root) -> dict:
    return dict(
        root=str(cifar_root),
        train_per_class=5,
        test_per_class=10,
        calibration_images=10,
        calibration_test_images=20,
        holdout_images=20,
        extra_calibration_test_images=10,
        eval_every=4,
        eval_images=25,
    )


def _grown(cifar_root, tmp_path, **more):
    """(before, after, test indices of each set after) for a small selection, then the same
    selection with the `more` fields changed."""
    base = _selection(cifar_root)
    data.prepare(DataConfig(**base), tmp_path / "before")
    data.prepare(DataConfig(**(base | more)), tmp_path / "after")
    saved = np.load(tmp_path / "after" / "data.npz")
    index = {k: set(saved[f"{k}_index"].tolist()) for k in ("calib_test", "holdout", "eval")}
    return data.load(tmp_path / "before"), data.load(tmp_path / "after"), index


def test_extra_calibration_images_grow_the_set_without_moving_the_others(cifar_root, tmp_path):
    before, after, index = _grown(cifar_root, tmp_path, extra_calibration_test_images=25)
    assert len(after.calib.labels) == len(before.calib.labels) + 15
    # the first calibration images keep their order (their Monte-Carlo chunks stay valid)
    assert np.array_equal(after.calib.images[:30], before.calib.images[:30])
    assert np.array_equal(after.holdout.images, before.holdout.images)
    assert np.array_equal(after.eval.images, before.eval.images)
    calib = index["calib_test"]
    assert len(calib) == 45
    assert not (calib & index["holdout"]) and not (calib & index["eval"])


def test_extra_holdout_images_grow_the_holdout_at_its_end(cifar_root, tmp_path):
    before, after, index = _grown(cifar_root, tmp_path, extra_holdout_images=15)
    assert len(after.holdout.labels) == 35
    # the first hold-out images keep their order (their Monte-Carlo chunks stay valid)
    assert np.array_equal(after.holdout.images[:20], before.holdout.images)
    assert np.array_equal(after.calib.images, before.calib.images)
    assert np.array_equal(after.eval.images, before.eval.images)
    holdout = index["holdout"]
    assert len(holdout) == 35
    assert not (holdout & index["calib_test"]) and not (holdout & index["eval"])
    # 100 test images, 25 evaluated: 75 left, of which 50 went to calibration and hold-out
    too_many = DataConfig(**_selection(cifar_root), extra_holdout_images=26)
    with pytest.raises(DatasetError, match="cannot take 76"):
        data.prepare(too_many, tmp_path / "too_many")
