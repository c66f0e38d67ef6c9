"""Reusing a committed bundle's Monte-Carlo evidence: the same counts, said where they came from,
and refused wherever they would not be this config's."""

import dataclasses
import shutil

import numpy as np
import pytest

from exporter import pipeline
from exporter.config import load_config
from exporter.evaluate import MONTE_CARLO
from exporter.fidelity import load_evidence
from exporter.reuse import mismatches, reuse
from tests.exporter.conftest import SMOKE


def _fresh_work(work, tmp_path):
    """The smoke run's work folder without its Monte-Carlo chunks."""
    copy = tmp_path / "work"
    shutil.copytree(work, copy, ignore=shutil.ignore_patterns(*MONTE_CARLO.values()))
    return copy


def test_a_bundle_from_reused_evidence_has_the_source_counts_and_says_where_they_came_from(
    smoke_run, tmp_path
):
    cfg, work, out = smoke_run
    mine = dataclasses.replace(cfg, bundle=dataclasses.replace(cfg.bundle, name="smoke-reused"))
    copy = _fresh_work(work, tmp_path)
    written = reuse(mine, copy, out)
    source = load_evidence(out / "evidence.npz")
    assert written == {name: len(e) for name, e in source.items()}

    pipeline.run(mine, copy, tmp_path / "bundle", ["calibrate", "bundle", "evaluate"])
    made = load_evidence(tmp_path / "bundle" / "evidence.npz")
    for name, e in source.items():
        np.testing.assert_array_equal(made[name].counts, e.counts)
        np.testing.assert_array_equal(made[name].counts0, e.counts0)
    report = (tmp_path / "bundle" / "report.md").read_text()
    assert "via smoke" in report  # the chunks' sampler names the source bundle
    assert "mean that smoke 1.0.0 recorded: its counts are reused" in report


def test_a_larger_holdout_takes_the_source_counts_first_and_certifies_the_rest(smoke_run, tmp_path):
    cfg, work, out = smoke_run
    grown = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, extra_holdout_images=10))
    assert mismatches(grown, cfg.to_dict()) == []  # a hold-out that grows at its end
    copy = _fresh_work(work, tmp_path)
    pipeline.run(grown, copy, tmp_path / "unused", ["data"])
    reuse(grown, copy, out)
    pipeline.run(grown, copy, tmp_path / "bundle", ["calibrate", "bundle", "evaluate"])
    source = load_evidence(out / "evidence.npz")["holdout"]
    made = load_evidence(tmp_path / "bundle" / "evidence.npz")["holdout"]
    assert len(made) == len(source) + 10
    np.testing.assert_array_equal(made.counts[: len(source)], source.counts)
    assert made.counts[len(source) :].sum(1).tolist() == [cfg.bundle.n] * 10  # certified here


def test_reuse_is_refused_for_another_seed_base_graph_or_a_folder_with_chunks(smoke_run, tmp_path):
    cfg, work, out = smoke_run
    other_seed = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, seed=7))
    with pytest.raises(ValueError, match="evaluate.seed"):
        reuse(other_seed, _fresh_work(work, tmp_path / "a"), out)

    other_bundle = shutil.copytree(out, tmp_path / "other")  # a bundle with another base graph
    shutil.copy(other_bundle / "surrogate.onnx", other_bundle / "base.onnx")
    with pytest.raises(ValueError, match="not the base graph"):
        reuse(cfg, _fresh_work(work, tmp_path / "b"), other_bundle)

    with pytest.raises(FileExistsError, match="already holds chunks"):
        reuse(cfg, work, out)


def test_mismatches_name_what_the_monte_carlo_depends_on_and_nothing_else():
    cfg = load_config(SMOKE)
    same = cfg.to_dict()
    assert mismatches(cfg, same) == []
    moved = cfg.to_dict()
    moved["data"]["root"] = "/elsewhere"  # where the images are read from: not what they are
    moved["train_surrogate"]["epochs"] += 1  # the surrogate: not the Monte-Carlo
    assert mismatches(cfg, moved) == []
    moved["bundle"]["sigma"] *= 2
    moved["data"]["eval_every"] += 1
    moved["calibrate"]["seed"] += 1
    assert mismatches(cfg, moved) == ["bundle.sigma", "data.eval_every", "calibrate.seed"]


def test_a_selection_field_the_source_exporter_did_not_have_counts_as_its_default():
    cfg = load_config(SMOKE)
    older = cfg.to_dict()
    del older["data"]["extra_holdout_images"]  # a manifest written before the field existed
    assert mismatches(cfg, older) == []
    larger = cfg.to_dict()
    larger["data"]["extra_holdout_images"] = 5  # a source with more hold-out images than ours
    assert mismatches(cfg, larger) == ["data.extra_holdout_images"]


def test_other_images_are_refused_before_any_chunk_is_written(smoke_run, tmp_path):
    cfg, work, out = smoke_run
    copy = _fresh_work(work, tmp_path)
    arrays = dict(np.load(copy / "data.npz"))
    arrays["holdout_y"] = np.roll(arrays["holdout_y"], 1)  # the last set checked: other images
    assert not np.array_equal(
        arrays["holdout_y"], load_evidence(out / "evidence.npz")["holdout"].labels
    )
    np.savez(copy / "data.npz", **arrays)
    with pytest.raises(ValueError, match="holdout images are not this config's"):
        reuse(cfg, copy, out)
    assert not any((copy / folder).exists() for folder in MONTE_CARLO.values())
