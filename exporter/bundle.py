"""Stage 8, bundle: the model bundle the server serves (format: models/README.md).

Copies the two networks' ONNX graphs (`onnx_export.graph`) into the bundle folder and writes
`manifest.json`: classes, input spec, sigma, protocol, calibration (from `calibrate.load`),
graph names and opsets, exporter config, code revision, and the sha256 of every other file. It
copies rather than converts: each graph was converted and parity-checked by its export stage
(export-base, export-surrogate) before the Monte-Carlo stages sampled that very file; what the
bundle ships is byte for byte what was certified, calibrated and evaluated.

Later stages read the bundle through the core's `accsmooth.bundle.read_manifest` (the one
`Manifest` model) and change it only through `update_evaluation` and `rehash`, which rewrite
manifest.json with fresh hashes after validating it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import subprocess
from pathlib import Path

import onnx

from accsmooth.bundle import FORMAT_VERSION, MANIFEST, Manifest, sha256_of
from exporter import calibrate, onnx_export
from exporter import data as data_stage
from exporter.config import Config

log = logging.getLogger(__name__)


class BundleExistsError(FileExistsError):
    """The output folder already holds a different bundle."""


def code_revision() -> str:
    """Short git revision of this code, with "+dirty" when accsmooth/, exporter/ or server/ has
    changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "accsmooth", "exporter", "server"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        ).stdout
        return rev + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_manifest(bundle_dir: Path, manifest: dict) -> Path:
    """Write manifest.json with fresh sha256s of every other file in the folder, after checking
    it against the core's `Manifest` model: a bundle the server would refuse is never written."""
    manifest["sha256"] = {
        p.name: sha256_of(p)
        for p in sorted(bundle_dir.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    Manifest.model_validate(manifest)
    path = bundle_dir / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def _written(bundle_dir: Path) -> dict:
    """manifest.json as written (its keys, in order), for a rewrite that changes one part."""
    return json.loads((bundle_dir / MANIFEST).read_text())


def update_evaluation(bundle_dir: Path, summary: dict, *, merge: bool = False) -> Path:
    """Set the manifest's evaluation summary (`merge`: add `summary`'s keys to it) and rehash
    every file of the bundle."""
    manifest = _written(bundle_dir)
    manifest["evaluation"] = ((manifest.get("evaluation") or {}) if merge else {}) | summary
    return write_manifest(bundle_dir, manifest)


def rehash(bundle_dir: Path) -> Path:
    """Rewrite the manifest with the sha256 of every file now in the bundle folder."""
    return write_manifest(bundle_dir, _written(bundle_dir))


def check_output_folder(out: Path, name: str) -> None:
    """Refuse to overwrite a folder that holds another bundle (or unrelated files). Reads only
    the manifest's name, not the whole model: a bundle of an older format, or a broken one,
    of the same name may be rebuilt."""
    if not out.exists():
        return
    manifest = out / MANIFEST
    if manifest.exists():
        existing = json.loads(manifest.read_text()).get("name")
        if existing != name:
            raise BundleExistsError(
                f"{out}: holds bundle {existing!r}, not {name!r}; choose another --out or remove it"
            )
    elif any(out.iterdir()):
        raise BundleExistsError(f"{out}: not empty and not a bundle; choose another --out")


def run(cfg: Config, work: Path, out: Path) -> Path:
    b = cfg.bundle
    check_output_folder(out, b.name)
    ds = data_stage.load(work)
    calibration = calibrate.load(work)
    sources = {kind: onnx_export.graph(work, kind) for kind in ("surrogate", "base")}
    out.mkdir(parents=True, exist_ok=True)
    graphs = {}
    for kind, src in sources.items():
        shutil.copyfile(src, out / f"{kind}.onnx")
        opset = next(o.version for o in onnx.load(src).opset_import if o.domain in ("", "ai.onnx"))
        graphs[kind] = {
            "file": f"{kind}.onnx",
            "input": "images",
            "output": onnx_export.OUTPUT_NAMES[kind],
            "opset": opset,
            # what a call costs the server (its micro-batch cap): a probe graph runs the base too
            "passes_per_image": 1 + (cfg.train_surrogate.probes if kind == "surrogate" else 0),
        }
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": b.name,
        "version": b.version,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "description": b.description,
        "classes": ds.classes,
        "input": {
            "shape": list(ds.train.images.shape[1:]),
            "dtype": "float32",
            "layout": "NCHW",
            "range": [0.0, 1.0],
        },
        "sigma": b.sigma,
        "noise": "gaussian",
        "protocol": {"n0": b.n0, "n": b.n, "alpha": b.alpha},
        "calibration": {
            k: calibration[k]
            for k in (
                "method",
                "scale",
                "epsilon",
                "shift",
                "set_size",
                "images",
                "empirical_violation_rate",
                "bin_edges",
                "bin_shifts",
            )
            if k in calibration
        },
        "graphs": graphs,
        "exporter": {"config": cfg.to_dict(), "code_revision": code_revision()},
        "evaluation": None,
    }
    path = write_manifest(out, manifest)
    log.info("bundle: %s written to %s", b.name, out)
    return path
