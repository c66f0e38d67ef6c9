"""exporter.compare: other bundles' served rules on one bundle's Monte-Carlo evidence."""

from __future__ import annotations

import json
import shutil

import pytest

from exporter import tables
from exporter.compare import compare, main
from exporter.fidelity import Evidence, load_evidence, save_evidence

KEYS = ("images", "top1_agreement", "versus_monte_carlo", "certified_accuracy")


def _flat(tree, prefix=""):
    """{"a.b.c": number} of a nested dict of numbers."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}.{key}").items()}


def _copy(bundle, folder, **changes):
    """A copy of `bundle` in `folder` with these top-level manifest fields replaced."""
    shutil.copytree(bundle, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_a_bundle_on_its_own_evidence_gives_its_report_tables(smoke_run):
    _, _, out = smoke_run
    ours = compare([out])[out.name]  # the images read again, the surrogate run again
    recorded = tables.recompute(out)
    assert set(ours) == {"evaluation", "holdout"}
    for name, t in ours.items():
        want = _flat({k: recorded[name][k] for k in KEYS})
        assert _flat({k: t[k] for k in KEYS}) == pytest.approx(want)


def test_another_bundle_is_scored_with_its_own_rule_on_the_same_counts(smoke_run, tmp_path):
    _, _, out = smoke_run
    uncalibrated = _copy(out, tmp_path / "uncalibrated", name="uncalibrated", calibration=None)
    results = compare([out, uncalibrated])
    for name in ("evaluation", "holdout"):
        ours, theirs = results[out.name][name], results["uncalibrated"][name]
        accuracy = theirs["certified_accuracy"]
        # the same Monte-Carlo certificates, and without a shift the served rule is the raw one
        assert accuracy["monte_carlo"] == ours["certified_accuracy"]["monte_carlo"]
        assert accuracy["surrogate_calibrated"] == accuracy["surrogate_raw"]


def test_a_bundle_with_another_ground_truth_is_refused(smoke_run, tmp_path, capsys):
    _, _, out = smoke_run
    manifest = json.loads((out / "manifest.json").read_text())
    other = _copy(out, tmp_path / "other", sigma=2 * manifest["sigma"])
    with pytest.raises(ValueError, match="another sigma"):
        compare([out, other])
    assert main([str(out), str(other)]) == 2
    assert "another sigma" in capsys.readouterr().err


def test_images_that_are_not_the_evidences_are_refused(smoke_run, tmp_path):
    _, _, out = smoke_run
    copy = _copy(out, tmp_path / "copy")
    sets = load_evidence(copy / "evidence.npz")
    holdout = sets["holdout"]  # as if the images had been other ones with the same labels
    sets["holdout"] = Evidence(holdout.labels, holdout.counts0, holdout.counts, holdout.probs[::-1])
    save_evidence(copy / "evidence.npz", sets)
    with pytest.raises(ValueError, match="holdout images read again are not the ones"):
        compare([copy])
