"""The bundle format: the one `Manifest` model, `FORMAT_VERSION`, `sha256_of`, and the checks.

A bundle is a folder `models/<name>/` holding `manifest.json`, `surrogate.onnx`, `base.onnx`
and whatever reports the exporter wrote; `models/README.md` documents the format. The exporter
builds a `Manifest` and validates it before writing; the server reads it with `read_manifest`.
Every check raises `BundleError` with a message that names the file and the problem, so that an
operator reading `/readyz` or the log knows what to fix:

    manifest = read_manifest(Path("models/cifar10-sigma0.25"))
    verify_files(folder, manifest)              # existence + sha256 of every listed file
    check_graph(session, manifest, "surrogate") # input/output names and shapes vs the manifest
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from accsmooth.smoothing import ShiftRule

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# per-image evidence the exporter ships beside the report (labels, Monte-Carlo counts and
# surrogate outputs of each image set, `<set>_<array>`): every table of report.md is
# recomputed from it, and the server reads the evaluation images' part to rank bundles by radius
EVIDENCE = "evidence.npz"


class BundleError(ValueError):
    """A bundle on disk is corrupt or inconsistent; `detail` names the file and the problem."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


class InputSpec(_Frozen):
    shape: tuple[Literal[3], int, int]  # [3, H, W]
    dtype: Literal["float32"] = "float32"
    layout: Literal["NCHW"] = "NCHW"
    range: tuple[float, float] = (0.0, 1.0)

    @property
    def height(self) -> int:
        return self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[2]


class Protocol(_Frozen):
    n0: int = Field(gt=0)
    n: int = Field(gt=0)
    alpha: float = Field(gt=0.0, lt=1.0)


class Calibration(_Frozen):
    epsilon: float = Field(gt=0.0, lt=1.0)
    # one shift for every image; with bins, the largest of them (what a reader that does not
    # know bins applies: never more generous than the binned rule). May be +inf: always abstain
    shift: float = Field(ge=0.0)
    set_size: int = Field(gt=0)
    empirical_violation_rate: float | None = None
    method: str = "split-conformal"
    # Mondrian split-conformal ("mondrian-conformal"): one shift per bin of Phi^-1(raw pABar),
    # bin_edges increasing, len(bin_shifts) == len(bin_edges) + 1 (accsmooth.smoothing.ShiftRule)
    bin_edges: tuple[float, ...] = ()
    bin_shifts: tuple[float, ...] = ()

    @model_validator(mode="after")
    def _bins_are_consistent(self) -> Calibration:
        if self.bin_edges or self.bin_shifts:
            ShiftRule(self.bin_edges, self.bin_shifts)  # raises ValueError when inconsistent
            if any(q < 0 for q in self.bin_shifts):
                raise ValueError("bin_shifts must be >= 0: calibration only lowers radii")
        return self

    @property
    def rule(self) -> float | ShiftRule:
        """What the served rule subtracts: the binned rule when there are bins, else `shift`."""
        return ShiftRule(self.bin_edges, self.bin_shifts) if self.bin_shifts else self.shift


class GraphSpec(_Frozen):
    file: str
    input: str
    output: str
    opset: int | None = None
    # network passes the graph makes per image: 1, or 1 + K for a probe surrogate that also runs
    # the base on K noisy copies (None: not recorded, bundles made before the field existed)
    passes_per_image: int | None = Field(default=None, gt=0)


class Graphs(_Frozen):
    surrogate: GraphSpec
    base: GraphSpec


class Manifest(_Frozen):
    """The parsed `manifest.json` (format_version `FORMAT_VERSION`)."""

    format_version: Literal[FORMAT_VERSION]
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str
    created: str | None = None
    description: str = ""
    classes: tuple[str, ...] = Field(min_length=2)
    input: InputSpec
    sigma: float = Field(gt=0.0)
    noise: Literal["gaussian"]
    protocol: Protocol
    calibration: Calibration | None = None
    graphs: Graphs
    sha256: dict[str, str]
    exporter: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _graphs_are_hashed(self) -> Manifest:
        for spec in (self.graphs.surrogate, self.graphs.base):
            if spec.file not in self.sha256:
                raise ValueError(f"graphs name {spec.file!r}, which has no sha256 entry")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def passes_per_image(self) -> int:
        """Network passes the surrogate graph makes per image: 1, or 1 + K for a probe graph,
        which runs the base on K noisy copies. As its graph spec records it; for bundles made
        before that field, from their exporter config's `train_surrogate.probes`."""
        if self.graphs.surrogate.passes_per_image is not None:
            return self.graphs.surrogate.passes_per_image
        config = (self.exporter or {}).get("config") or {}
        probes = (config.get("train_surrogate") or {}).get("probes") or 0
        return 1 + int(probes)

    def images_within(self, passes: int) -> int:
        """How many images a surrogate call may hold within `passes` network passes (one at the
        least): what caps the server's micro-batches, and the batches a benchmark times."""
        return max(1, passes // self.passes_per_image)

    @property
    def shift(self) -> float | ShiftRule:
        """The calibration subtracted from served bounds on the normal-quantile scale: one shift,
        or a shift per bin (`ShiftRule`); 0 when uncalibrated."""
        return self.calibration.rule if self.calibration else 0.0


def read_manifest(folder: Path) -> Manifest:
    """Parse and validate `folder/manifest.json`; BundleError naming the field on any problem."""
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: missing (every bundle needs a {MANIFEST})")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(raw, dict) and raw.get("format_version") != FORMAT_VERSION:
        found = raw.get("format_version")
        raise BundleError(f"{path}: format_version {found!r}, this server reads {FORMAT_VERSION}")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors()
        )
        raise BundleError(f"{path}: {problems}") from exc


def evaluation_outputs(folder: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels [M], surrogate probabilities [M, K]) of the bundle's evaluation images, from its
    `EVIDENCE` file; None when the bundle ships none. BundleError when it is unreadable."""
    path = folder / EVIDENCE
    if not path.is_file():
        return None
    try:
        with np.load(path) as saved:
            labels, probs = saved["evaluation_labels"], saved["evaluation_probs"]
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(
            f"{path}: no readable evaluation_labels/evaluation_probs ({exc})"
        ) from exc
    if probs.ndim != 2 or len(labels) != len(probs):
        raise BundleError(
            f"{path}: {len(labels)} evaluation labels for probabilities of shape {probs.shape}"
        )
    return labels.astype(np.int64), probs.astype(np.float64)


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_files(folder: Path, manifest: Manifest) -> None:
    """Every file the manifest lists exists and has its sha256; unlisted files are logged."""
    for name, expected in sorted(manifest.sha256.items()):
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"{folder / MANIFEST}: sha256 lists {name!r}, outside the bundle")
        if not path.is_file():
            raise BundleError(f"{path}: missing (listed in {MANIFEST})")
        actual = sha256_of(path)
        if actual != expected.lower():
            raise BundleError(
                f"{path}: sha256 mismatch (manifest {expected[:12]}..., file {actual[:12]}...);"
                " the file is corrupt or was changed after export"
            )
    listed = set(manifest.sha256) | {MANIFEST}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.relative_to(folder).as_posix() not in listed:
            log.warning("%s: not listed in %s, ignored", path, MANIFEST)


def check_graph(session, manifest: Manifest, kind: Literal["surrogate", "base"]) -> None:
    """The session's single input/output match the manifest: names, [B,3,H,W] in, [B,K] out."""
    spec = getattr(manifest.graphs, kind)
    where = f"{spec.file} ({kind})"
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or inputs[0].name != spec.input:
        names = [i.name for i in inputs]
        raise BundleError(f"{where}: graph inputs {names}, manifest says one named {spec.input!r}")
    if len(outputs) != 1 or outputs[0].name != spec.output:
        names = [o.name for o in outputs]
        raise BundleError(f"{where}: graph outputs {names}, manifest says {spec.output!r}")
    if inputs[0].type != "tensor(float)":
        raise BundleError(f"{where}: input type {inputs[0].type}, expected tensor(float)")
    want_in = [3, manifest.input.height, manifest.input.width]
    shape_in = list(inputs[0].shape)
    if len(shape_in) != 4 or not _dims_match(shape_in[1:], want_in):
        raise BundleError(f"{where}: input shape {shape_in}, expected [batch, *{want_in}]")
    shape_out = list(outputs[0].shape)
    if len(shape_out) != 2 or not _dims_match(shape_out[1:], [manifest.num_classes]):
        raise BundleError(
            f"{where}: output shape {shape_out}, expected [batch, {manifest.num_classes}]"
            f" ({manifest.num_classes} classes in the manifest)"
        )


def _dims_match(dims: list, want: list[int]) -> bool:
    """Static dims must equal `want`; symbolic ones (strings/None) are checked at warm-up."""
    return all(not isinstance(d, int) or d == w for d, w in zip(dims, want, strict=True))
