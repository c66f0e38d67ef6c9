"""Stage 1, data: an ImageFolder dataset as uint8 arrays, split into train / calibration / eval.

Layout read: `<root>/<split>/<class>/<file>` (any Pillow-readable image), classes sorted by
name as in torchvision's ImageFolder. Images are held as one uint8 array [N,3,H,W] per split,
never as per-sample Python objects. On machines with internet, `download_cifar10(root)` writes
the real CIFAR-10 (canonical archive, checksum-verified) into that layout first.

Artifact: `<work>/data.npz` with train/calib/eval images and labels, and the class names,
read through `load(work)`.
Calibration images are drawn from train/ and removed from it, so neither network sees them.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from exporter.config import DataConfig

log = logging.getLogger(__name__)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARTIFACT = "data.npz"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".gif", ".tif", ".tiff"}


class DatasetError(ValueError):
    """The dataset folder is missing, malformed or unreadable; the message says what and where."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [N,3,H,W]
    labels: np.ndarray  # int64 [N]


@dataclass(frozen=True)
class Dataset:
    classes: list[str]
    train: Split
    calib: Split
    eval: Split
    holdout: Split  # test images no stage uses (may be empty): the report's unseen check


def read_image_folder(split_dir: Path, per_class: int = 0, max_bad_fraction: float = 0.01):
    """(images uint8 [N,3,H,W], labels [N], classes) of one split; unreadable files skipped."""
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir}: not a folder; expected <root>/<split>/<class>/<image>")
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir())
    if not class_dirs:
        raise DatasetError(f"{split_dir}: no class folders; expected <split>/<class>/<image>")
    images, labels, bad, shape = [], [], [], None
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if per_class:
            files = files[:per_class]
        if not files:
            raise DatasetError(f"{class_dir}: class folder holds no images")
        for path in files:
            try:
                with Image.open(path) as im:
                    array = np.asarray(im.convert("RGB"), dtype=np.uint8)
            except Exception as exc:  # noqa: BLE001 - any decoder failure is "unreadable"
                bad.append(f"{path}: {exc}")
                continue
            if shape is None:
                shape = array.shape
            elif array.shape != shape:
                bad.append(f"{path}: size {array.shape[:2]} differs from {shape[:2]}")
                continue
            images.append(array.transpose(2, 0, 1))
            labels.append(label)
    total = len(images) + len(bad)
    if bad:
        log.warning("%s: skipped %d unreadable image(s), e.g. %s", split_dir, len(bad), bad[0])
    if not images or len(bad) > max_bad_fraction * total:
        raise DatasetError(
            f"{split_dir}: {len(bad)} of {total} images unreadable (limit "
            f"{max_bad_fraction:.0%}); first: {bad[0] if bad else 'none'}"
        )
    return np.stack(images), np.asarray(labels, dtype=np.int64), [p.name for p in class_dirs]


def download_cifar10(root: Path) -> None:
    """Fetch CIFAR-10 from its canonical source, verify the MD5, write it as PNG ImageFolder."""
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz"
    if not archive.exists():
        log.info("downloading %s", CIFAR10_URL)
        urllib.request.urlretrieve(CIFAR10_URL, archive)
    digest = hashlib.md5(archive.read_bytes()).hexdigest()
    if digest != CIFAR10_MD5:
        raise DatasetError(f"{archive}: md5 {digest} != expected {CIFAR10_MD5}; delete and retry")
    with tarfile.open(archive) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        meta = pickle.load(tar.extractfile(members["batches.meta"]), encoding="latin1")
        names = meta["label_names"]
        for split, batches in [
            ("train", [f"data_batch_{i}" for i in range(1, 6)]),
            ("test", ["test_batch"]),
        ]:
            count = 0
            for batch in batches:
                d = pickle.load(tar.extractfile(members[batch]), encoding="latin1")
                for row, label in zip(d["data"], d["labels"], strict=True):
                    out = root / split / names[label] / f"{count:05d}.png"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(row.reshape(3, 32, 32).transpose(1, 2, 0)).save(out)
                    count += 1


def prepare(cfg: DataConfig, work: Path) -> Path:
    """Read train/ and test/, hold out calibration images, pick the eval subset; save data.npz."""
    root = Path(cfg.root)
    if cfg.download:
        download_cifar10(root)
    x, y, classes = read_image_folder(root / "train", cfg.train_per_class, cfg.max_bad_fraction)
    xt, yt, test_classes = read_image_folder(
        root / "test", cfg.test_per_class, cfg.max_bad_fraction
    )
    if test_classes != classes:
        raise DatasetError(f"{root}: test classes {test_classes} differ from train {classes}")
    if cfg.calibration_images >= len(x):
        raise DatasetError(
            f"{root}/train: {len(x)} images, cannot hold out {cfg.calibration_images}"
        )
    order = np.random.default_rng(cfg.seed).permutation(len(x))
    calib, train = order[: cfg.calibration_images], np.sort(order[cfg.calibration_images :])
    evaluation = np.arange(0, len(xt), cfg.eval_every)[: cfg.eval_images]
    # the other test images, in a seeded order: calibration, hold-out, more calibration, more
    # hold-out (each set grows at its end, so finished Monte-Carlo chunks stay valid)
    rest = np.setdiff1d(np.arange(len(xt)), evaluation)
    rest = np.random.default_rng([cfg.seed, 1]).permutation(rest)
    wanted = cfg.calibration_test_images + cfg.holdout_images
    extra = cfg.extra_calibration_test_images
    more = cfg.extra_holdout_images
    if wanted + extra + more > len(rest):
        raise DatasetError(
            f"{root}/test: {len(rest)} images outside the eval subset, cannot take "
            f"{wanted + extra + more} for calibration and hold-out"
        )
    calib_test = np.concatenate(
        [np.sort(rest[: cfg.calibration_test_images]), np.sort(rest[wanted : wanted + extra])]
    )
    taken = wanted + extra
    holdout = np.concatenate(
        [np.sort(rest[cfg.calibration_test_images : wanted]), np.sort(rest[taken : taken + more])]
    )
    out = work / ARTIFACT
    work.mkdir(parents=True, exist_ok=True)
    np.savez(
        out,
        classes=np.asarray(classes),
        train_x=x[train],
        train_y=y[train],
        calib_x=np.concatenate([x[calib], xt[calib_test]]),
        calib_y=np.concatenate([y[calib], yt[calib_test]]),
        calib_test_index=calib_test,
        eval_x=xt[evaluation],
        eval_y=yt[evaluation],
        eval_index=evaluation,
        holdout_x=xt[holdout],
        holdout_y=yt[holdout],
        holdout_index=holdout,
    )
    log.info(
        "data: %d train, %d calibration (%d from test/), %d eval, %d hold-out images of %d "
        "classes, shape %s",
        len(train),
        len(calib) + len(calib_test),
        len(calib_test),
        len(evaluation),
        len(holdout),
        len(classes),
        x.shape[1:],
    )
    return out


def load(work: Path) -> Dataset:
    """The data.npz artifact of `prepare`."""
    path = work / ARTIFACT
    if not path.exists():
        raise DatasetError(f"{path}: missing; run the data stage first")
    d = np.load(path)
    return Dataset(
        classes=[str(c) for c in d["classes"]],
        train=Split(d["train_x"], d["train_y"]),
        calib=Split(d["calib_x"], d["calib_y"]),
        eval=Split(d["eval_x"], d["eval_y"]),
        holdout=Split(d["holdout_x"], d["holdout_y"])
        if "holdout_x" in d
        else Split(d["eval_x"][:0], d["eval_y"][:0]),
    )


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 [N,3,H,W] -> float32 in [0,1], the models' input space."""
    return images.astype(np.float32) / np.float32(255.0)
