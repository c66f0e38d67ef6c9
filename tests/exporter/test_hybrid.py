"""The hybrid stage: /certify?mode=hybrid's figures added to the smoke bundle's report."""

from __future__ import annotations

import json

import pytest

from accsmooth.bundle import read_manifest, verify_files
from accsmooth.sampling import MIN_N
from exporter import hybrid
from exporter.config import HybridConfig

pytestmark = pytest.mark.slow  # every test here reads the smoke pipeline's bundle (smoke_run)


def test_the_report_gains_a_hybrid_section_and_the_manifest_still_verifies(smoke_run):
    _, _, out = smoke_run
    report = json.loads((out / "report.json").read_text())
    h = report["hybrid"]
    answered = h["answered_by"]
    assert answered["surrogate"] + answered["monte_carlo"] == pytest.approx(1.0)
    assert answered["surrogate"] == pytest.approx(
        answered["surrogate_clear_certify"] + answered["surrogate_clear_abstain"]
    )
    assert list(h["certified_accuracy"]) == ["0", "0.25", "0.5", "0.75", "1"]
    assert h["images"] == report["images"] and h["base_samples_per_second"] > 0
    assert "certified_accuracy" in report and "versus_monte_carlo" in report  # kept as it was
    assert (out / "report.md").read_text().count("## Hybrid certification (mode=hybrid)") == 1
    manifest = read_manifest(out)
    verify_files(out, manifest)
    assert manifest.evaluation["hybrid"]["certified_accuracy"] == h["certified_accuracy"]


def test_a_wide_margin_sends_images_to_monte_carlo_at_the_budget_size(smoke_run):
    _, work, out = smoke_run
    h = hybrid.evaluate(out, work, HybridConfig(margin=0.49, budget_ms=1.0))
    assert h["answered_by"]["monte_carlo"] > 0.5
    assert h["fallback_protocol"]["n"] == MIN_N  # 1 ms buys less than the floor
    assert h["latency_ms"]["monte_carlo"]["mean"] > 0
    assert 0.0 <= h["overestimation_rate_vs_monte_carlo"] <= 1.0
    # the fallback on the surrogate's class spends the selection round's draws on the bound
    alt = h["surrogate_class_fallback"]
    assert alt["n"] == h["fallback_protocol"]["n0"] + h["fallback_protocol"]["n"]
    assert list(alt["certified_accuracy"]) == list(h["certified_accuracy"])


def test_rerunning_replaces_the_section_instead_of_adding_one(smoke_run):
    _, work, out = smoke_run
    hybrid.run(out, work, HybridConfig(budget_ms=5.0))
    assert (out / "report.md").read_text().count("## Hybrid certification (mode=hybrid)") == 1
    assert json.loads((out / "report.json").read_text())["hybrid"]["budget_ms"] == 5.0
    verify_files(out, read_manifest(out))
