"""The smoke preset end to end: a bundle the server loads, serves and audits over HTTP."""

import dataclasses
import io
import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from accsmooth.bundle import read_manifest
from accsmooth.bundle import sha256_of as sha256
from exporter import ablation, calibrate, onnx_export, pipeline, tables
from exporter.bundle import BundleExistsError
from server.http.app import create_app
from tests.exporter.conftest import SMOKE
from tests.server.helpers import settings_for, wait_ready

pytestmark = pytest.mark.slow  # every test here reads the smoke pipeline's bundle (smoke_run)


def _png(chw_uint8: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(chw_uint8.transpose(1, 2, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_bundle_holds_every_artifact_with_matching_hashes(smoke_run):
    _, work, out = smoke_run
    manifest = read_manifest(out)
    for name in (
        "surrogate.onnx",
        "base.onnx",
        "report.json",
        "report.md",
        "certified_accuracy.png",
        "evidence.npz",
    ):
        assert manifest.sha256[name] == sha256(out / name)
    # 100 train + 40 test calibration images; 30% of them choose the rule, the rest fit it
    assert manifest.calibration.set_size == 98
    assert manifest.evaluation["images"] == 30
    assert manifest.graphs.surrogate.output == "probabilities"
    # the bundle ships the very graphs the export stages converted and the Monte-Carlo sampled
    assert manifest.sha256["base.onnx"] == sha256(onnx_export.graph(work, "base"))
    assert manifest.sha256["surrogate.onnx"] == sha256(onnx_export.graph(work, "surrogate"))
    assert list(pipeline.load_timings(work)) == list(pipeline.STAGES)  # each stage ran, in order


def test_report_compares_three_methods_at_the_table_radii(smoke_run):
    _, _, out = smoke_run
    report = json.loads((out / "report.json").read_text())
    assert set(report["certified_accuracy"]) == {
        "monte_carlo",
        "surrogate_raw",
        "surrogate_calibrated",
    }
    assert list(report["certified_accuracy"]["monte_carlo"]) == ["0", "0.25", "0.5", "0.75", "1"]
    mc = report["certified_accuracy"]["monte_carlo"]
    values = list(mc.values())
    assert values == sorted(values, reverse=True)  # certified accuracy decreases with r
    assert report["speedup"] > 1
    assert "| Monte-Carlo (CERTIFY) |" in (out / "report.md").read_text()
    assert f"(stages: {', '.join(pipeline.STAGES)});" in (out / "report.md").read_text()


def test_every_report_table_is_recomputed_from_the_evidence_alone(smoke_run, tmp_path):
    _, _, out = smoke_run
    assert tables.differences(out) == []
    copy = shutil.copytree(out, tmp_path / "smoke")
    report = json.loads((copy / "report.json").read_text())
    report["certified_accuracy"]["surrogate_calibrated"]["0"] += 0.01
    (copy / "report.json").write_text(json.dumps(report))
    assert tables.differences(copy) == ["evaluation.certified_accuracy"]
    manifest = json.loads((copy / "manifest.json").read_text())
    cal = manifest["calibration"]  # change the rule to one the evidence does not give
    if "bin_shifts" in cal:
        cal["bin_shifts"][0] += 0.01
    else:
        cal["shift"] += 0.01
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert "calibration" in tables.differences(copy)


def test_the_ablation_is_scored_on_the_bundles_evidence_and_recomputed_from_it(smoke_run, tmp_path):
    _, work, out = smoke_run
    copy = shutil.copytree(out, tmp_path / "smoke")
    variants = [
        f"smoke CE-probit={work / 'surrogate.onnx'}",
        f"same again={copy / 'surrogate.onnx'}",
    ]
    argv = [str(copy), "--work", str(work), "--config", str(SMOKE)]
    assert ablation.main(argv + [a for v in variants for a in ("--variant", v)]) == 0
    result = json.loads((copy / "ablation.json").read_text())
    assert [v["name"] for v in result["variants"]] == ["smoke CE-probit", "same again"]
    first, again = (v["rows"] for v in result["variants"])
    assert first == again and [row["rule"] for row in first] == [
        "one shift",
        "Mondrian, 2 bins",
        "Mondrian, bins chosen",
    ]
    assert "## Ablation" in (copy / "report.md").read_text()
    assert tables.differences(copy) == []
    assert read_manifest(copy).sha256["ablation.npz"] == sha256(copy / "ablation.npz")
    # --append keeps the rows scored before (from their saved outputs) and adds the new ones
    more = ["--append", "--variant", f"third={work / 'surrogate.onnx'}"]
    assert ablation.main(argv + more) == 0
    grown = json.loads((copy / "ablation.json").read_text())
    assert [v["name"] for v in grown["variants"]] == ["smoke CE-probit", "same again", "third"]
    assert grown["variants"][0]["rows"] == first and grown["variants"][2]["rows"] == first
    assert tables.differences(copy) == []


def test_report_covers_the_hold_out_images_and_the_calibration_rule(smoke_run):
    _, work, out = smoke_run
    report = json.loads((out / "report.json").read_text())
    assert report["holdout"]["images"] == 30
    calibration = calibrate.load(work)
    assert set(calibration["selection"]["mean_certified_accuracy_by_bins"]) == {"1", "2"}
    assert calibration["selection"]["images"] == 42
    assert "## Hold-out: 30 test images no stage used" in (out / "report.md").read_text()


def test_smoke_bundle_is_served_and_audited_over_http(smoke_run):
    cfg, work, out = smoke_run
    from exporter import data

    image = data.load(work).eval.images[0]
    with TestClient(create_app(settings_for(out.parent))) as client:
        wait_ready(client)
        fast = client.post("/certify", files={"image": ("x.png", _png(image), "image/png")})
        assert fast.status_code == 200, fast.text
        body = fast.json()
        assert body["model"] == "smoke" and body["method"] == "surrogate"
        assert body["abstained"] or body["label"] in data.load(work).classes
        audit = client.post(
            "/certify/sampled",
            params={"n0": 20, "n": 200, "seed": 3},
            files={"image": ("x.png", _png(image), "image/png")},
        )
        assert audit.status_code == 200, audit.text
        assert sum(audit.json()["counts"]) == 200


def test_output_folder_holding_another_bundle_is_refused(smoke_run, tmp_path):
    cfg, work, out = smoke_run
    with pytest.raises(BundleExistsError, match="holds bundle 'smoke'"):
        other = dataclasses.replace(cfg, bundle=dataclasses.replace(cfg.bundle, name="other"))
        pipeline.run(other, work, out, ["bundle"])


def test_cached_monte_carlo_results_of_another_base_model_are_refused(smoke_run, tmp_path):
    cfg, work, _ = smoke_run
    from exporter import data
    from exporter.certify_images import certify_all

    images = data.load(work).eval.images[:2]
    kwargs = dict(batch_size=64, seed=0, out_dir=tmp_path / "mc", desc="mc")
    certify_all(work / "base.onnx", images, cfg.bundle, **kwargs)
    with pytest.raises(ValueError, match="another protocol or base model"):
        certify_all(work / "surrogate.onnx", images, cfg.bundle, **kwargs)
