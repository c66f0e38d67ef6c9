"""The targets stage: counts sum to N (or N + extra for confident images), a seed reproduces
them, a killed run resumes exactly, stale chunks of another protocol are refused."""

import dataclasses
import shutil

import numpy as np
import pytest

from exporter import targets

pytestmark = pytest.mark.slow  # every test here reads the smoke pipeline's work folder (smoke_run)


def _copy_work(src, dst):
    dst.mkdir()
    for name in ("data.npz", "base.pt", "base.onnx", "base.onnx.json"):
        shutil.copy2(src / name, dst / name)
    return dst


def _with_seed(cfg, seed):
    return dataclasses.replace(cfg, targets=dataclasses.replace(cfg.targets, seed=seed))


def test_counts_sum_to_n_and_confident_images_get_the_extra_draws(smoke_run):
    cfg, work, _ = smoke_run
    c = cfg.targets
    counts = np.load(work / "targets" / "counts.npy")
    assert counts.shape[1] == 10
    extra = counts.sum(1) == c.num_samples + c.extra_samples
    assert (extra | (counts.sum(1) == c.num_samples)).all()
    assert 0 < extra.sum() < len(counts)  # the smoke base is confident on some images only
    # an image got more draws exactly when its first N were confident: then, all of its
    # top-class draws but at most (1 - fraction) * N came from the first round
    plain = counts[~extra]
    assert (plain.max(1) < c.confident_fraction * c.num_samples).all()


def test_chunks_of_another_protocol_are_refused(smoke_run, tmp_path):
    cfg, work, _ = smoke_run
    copy = _copy_work(work, tmp_path / "stale")
    shutil.copytree(work / "targets", copy / "targets")
    more = dataclasses.replace(cfg, targets=dataclasses.replace(cfg.targets, extra_samples=64))
    with pytest.raises(ValueError, match="another protocol or base model"):
        targets.run(more, copy)


def test_same_seed_gives_the_same_counts_and_another_seed_does_not(smoke_run, tmp_path):
    cfg, work, _ = smoke_run
    again = np.load(targets.run(cfg, _copy_work(work, tmp_path / "a")))
    other = np.load(targets.run(_with_seed(cfg, 7), _copy_work(work, tmp_path / "b")))
    assert np.array_equal(again, np.load(work / "targets" / "counts.npy"))
    assert not np.array_equal(other, again)


def test_resuming_an_interrupted_run_gives_the_same_counts(smoke_run, tmp_path):
    cfg, work, _ = smoke_run
    resumed = _copy_work(work, tmp_path / "resumed")
    shutil.copytree(work / "targets", resumed / "targets")
    chunks = sorted((resumed / "targets").glob("chunk_*.npy"))
    assert len(chunks) >= 3
    for path in chunks[len(chunks) // 2 :]:  # "killed" halfway: later chunks never written
        path.unlink()
    (resumed / "targets" / "counts.npy").unlink()
    assert np.array_equal(
        np.load(targets.run(cfg, resumed)), np.load(work / "targets" / "counts.npy")
    )


def test_meta_records_the_rate_against_bare_onnxruntime(smoke_run):
    import json

    _, work, _ = smoke_run
    meta = json.loads((work / "targets" / "meta.json").read_text())
    assert meta["bare_onnxruntime_images_per_s"] > 0
    assert 0 < meta["fraction_of_bare"] <= 1.5


def test_max_images_labels_a_prefix_of_the_training_set_with_the_same_counts(smoke_run, tmp_path):
    cfg, work, _ = smoke_run
    some = dataclasses.replace(cfg, targets=dataclasses.replace(cfg.targets, max_images=128))
    counts = np.load(targets.run(some, _copy_work(work, tmp_path / "some")))
    assert np.array_equal(counts, np.load(work / "targets" / "counts.npy")[:128])


def _replace(cfg, section, **values):
    return dataclasses.replace(
        cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)}
    )


def test_flipped_labels_every_mirror_image_with_draws_of_its_own(smoke_run, tmp_path):
    cfg, work, _ = smoke_run
    copy = _copy_work(work, tmp_path / "mirrors")
    counts = np.load(targets.run(_replace(cfg, "targets", flipped=True), copy))
    train = np.load(copy / "data.npz")["train_x"]
    assert counts.shape == (2 * len(train), 10)
    images = targets.labelled_images(copy, train)
    assert np.array_equal(images[: len(train)], train)
    assert np.array_equal(images[len(train) :], train[..., ::-1])
    # chunks of originals alone draw what the plain run drew; the mirrors' counts are drawn, not
    # copied (the chunk that holds the last originals and the first mirrors has its own stream)
    whole = len(train) // cfg.targets.chunk_images * cfg.targets.chunk_images
    assert whole > 0
    assert np.array_equal(counts[:whole], np.load(work / "targets" / "counts.npy")[:whole])
    assert not np.array_equal(counts[len(train) :], counts[: len(train)])


def test_a_wider_surrogate_trains_from_scratch_on_the_mirror_targets(smoke_run, tmp_path):
    from exporter import models, onnx_export, train_surrogate

    cfg, work, _ = smoke_run
    copy = _copy_work(work, tmp_path / "wide")
    cfg = _replace(cfg, "targets", flipped=True)
    targets.run(cfg, copy)
    wide = _replace(cfg, "train_surrogate", widths=(8, 16, 16))
    with pytest.raises(ValueError, match="init_from_base = false"):
        train_surrogate.run(wide, copy)
    train_surrogate.run(
        _replace(wide, "train_surrogate", widths=(8, 16, 16), init_from_base=False), copy
    )
    net = models.from_checkpoint(copy / train_surrogate.CHECKPOINT)
    first = [m for m in net.modules() if hasattr(m, "out_channels")][0]
    assert first.out_channels == 8
    onnx_export.run(cfg, copy, "surrogate")
    assert onnx_export.graph(copy, "surrogate").exists()


def test_a_surrogate_trains_with_online_targets(smoke_run, tmp_path):
    from exporter import onnx_export, train_surrogate

    cfg, work, _ = smoke_run
    copy = _copy_work(work, tmp_path / "online")
    shutil.copytree(work / "targets", copy / "targets")
    train_surrogate.run(_replace(cfg, "train_surrogate", online_samples=8), copy)
    onnx_export.run(cfg, copy, "surrogate")
    assert onnx_export.graph(copy, "surrogate").exists()
