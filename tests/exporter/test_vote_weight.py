"""exporter.vote_weight: a probe bundle's candidate vote weights, scored on its own evidence.

The smoke pipeline's work folder, its surrogate given a 4-probe head that serves half its votes,
rebuilt into a bundle from the Monte-Carlo already drawn there (the same base graph)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from accsmooth.bundle import read_manifest
from exporter import pipeline, tables, vote_weight
from exporter.compare import image_sets
from exporter.config import load_config
from tests.exporter.conftest import SMOKE

PROBE_HEAD = [
    "train_surrogate.probes=4",
    "train_surrogate.head_epochs=2",
    "train_surrogate.head_hidden=16",
    "train_surrogate.vote_weight=0.5",
]
REBUILT = ["train-surrogate", "export-surrogate", "calibrate", "bundle", "evaluate"]


@pytest.fixture(scope="module")
def probe_bundle(smoke_run, full_cifar_root, tmp_path_factory):
    _, work, _ = smoke_run
    folder = tmp_path_factory.mktemp("probe-smoke")
    shutil.copytree(work, folder / "work")
    cfg = load_config(SMOKE, [f"data.root={full_cifar_root}", *PROBE_HEAD])
    pipeline.run(cfg, folder / "work", folder / "bundle", REBUILT)
    return folder / "bundle"


def test_the_bundles_own_weight_scores_as_its_report_and_the_mixes_are_the_graphs(probe_bundle):
    rows = vote_weight.weigh(probe_bundle, (0.0, 0.5, 1.0))
    assert [r["vote_weight"] for r in rows] == [0.0, 0.5, 1.0]
    recorded = tables.recompute(probe_bundle)
    own = rows[1]["sets"]
    for name in ("evaluation", "holdout"):  # the same rule fitted again, the same answers
        for key in ("certified_accuracy", "versus_monte_carlo", "top1_agreement"):
            assert json.dumps(own[name][key]) == json.dumps(recorded[name][key])
    assert all(r["score"] is not None for r in rows)  # the smoke config chooses among 2 rules
    # w = 0 and w = 1: the head's probabilities and the 4 probes' vote shares
    manifest = read_manifest(probe_bundle)
    graph = onnx.load(probe_bundle / manifest.graphs.surrogate.file)
    # the bundle stage records what the graph costs: the network and the 4 probes
    assert (manifest.graphs.surrogate.passes_per_image, manifest.graphs.base.passes_per_image) == (
        5,
        1,
    )
    images = image_sets(probe_bundle, manifest, None)["evaluation"].images
    head, votes = vote_weight.components(graph, images)
    np.testing.assert_allclose(head.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(votes * 4, np.round(votes * 4))
    np.testing.assert_allclose(votes.sum(1), 1.0)
    assert np.abs(head - votes).max() > 0.1  # two different answers to mix


def test_the_command_marks_the_best_score_and_refuses_a_graph_without_a_weight(
    probe_bundle, smoke_run, tmp_path, capsys
):
    out = tmp_path / "rows.json"
    assert vote_weight.main([str(probe_bundle), "--weights", "0", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    best = max(rows, key=lambda r: r["score"])["vote_weight"]
    printed = capsys.readouterr().out
    assert f"| **{best:g}** |" in printed and f"vote weight {best:g} (bold)" in printed
    _, _, plain = smoke_run
    assert vote_weight.main([str(plain)]) == 2
    assert "no vote weight" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vote_weight.main([str(probe_bundle), "--weights", "1.5"])
