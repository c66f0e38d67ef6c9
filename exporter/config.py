"""Exporter configuration: one frozen dataclass per stage, loaded from a TOML preset + overrides.

    cfg = load_config("exporter/configs/smoke.toml", ["train_base.epochs=2", "bundle.sigma=0.5"])

Every field carries its unit. Overrides are `section.field=value`, parsed with the field's type
(never `exec`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import tomllib


@dataclass(frozen=True)
class BundleConfig:
    name: str = "cifar10-sigma0.25"  # folder name under models/ and manifest name
    version: str = "1.0.0"
    description: str = "CIFAR-10 surrogate certifier"
    sigma: float = 0.25  # Gaussian noise std, in [0,1]-pixel units
    n0: int = 100  # CERTIFY selection samples (reference protocol)
    n: int = 10_000  # CERTIFY estimation samples (reference protocol)
    alpha: float = 0.001  # CERTIFY failure probability


@dataclass(frozen=True)
class DataConfig:
    root: str = "../shared/datasets/cifar10"  # ImageFolder root holding train/ and test/
    download: bool = False  # fetch CIFAR-10 from its canonical source into `root` first
    train_per_class: int = 0  # images per class read from train/ (0 = all)
    test_per_class: int = 0  # images per class read from test/ (0 = all)
    calibration_images: int = 500  # held out of train/: never trained on, used to calibrate
    calibration_test_images: int = 0  # more calibration images from test/ (never the eval ones)
    holdout_images: int = 0  # test/ images used by no stage: an unseen check of the report
    # still more calibration images from test/, drawn after the hold-out: growing the
    # calibration set this way keeps the hold-out and the first calibration images (and their
    # resumable Monte-Carlo chunks) as they were
    extra_calibration_test_images: int = 0
    # still more hold-out images from test/, drawn after those: a larger unseen check whose
    # first `holdout_images` (and their Monte-Carlo chunks) stay as they were
    extra_holdout_images: int = 0
    eval_every: int = 18  # evaluation subset = every k-th test image ...
    eval_images: int = 500  # ... at most this many
    max_bad_fraction: float = 0.01  # unreadable images are skipped; fatal above this fraction
    seed: int = 0  # for the calibration hold-out draw


@dataclass(frozen=True)
class TrainBaseConfig:
    arch: str = "cnn"  # "cnn" (CPU-friendly) or "resnet110" (Cohen et al., GPU)
    widths: tuple[int, int, int] = (16, 32, 64)  # channels per stage (cnn only)
    epochs: int = 15  # passes over the training set
    batch_size: int = 256  # images per step
    lr: float = 0.2  # peak learning rate of the one-cycle schedule (per batch of 256)
    momentum: float = 0.9
    weight_decay: float = 5e-4  # L2 penalty per step
    augment: bool = True  # random crop (pad 4) + horizontal flip
    threads: int = 0  # torch CPU threads (0 = all cores)
    seed: int = 0
    # a trained base graph (e.g. a committed bundle's base.onnx) to import instead of training:
    # its Monte-Carlo results are then those of the very file that bundle serves
    from_onnx: str = ""


@dataclass(frozen=True)
class TargetsConfig:
    num_samples: int = 32  # N: noisy copies per training image for its count vector
    batch_size: int = 1024  # noisy images per onnxruntime call
    chunk_images: int = 2048  # images per resumable chunk file
    # adaptive N: an image whose top class took >= confident_fraction of its N draws gets
    # extra_samples more, to resolve p_A in 0.99-0.9999, where certified radii live
    extra_samples: int = 0
    confident_fraction: float = 1.0
    # label only the first max_images training images (0 = all); the surrogate trains on those
    max_images: int = 0
    # label each image's horizontal mirror too, with its own draws (the surrogate trains on both)
    flipped: bool = False
    seed: int = 0


@dataclass(frozen=True)
class TrainSurrogateConfig:
    loss: str = "js"  # "js" (Jensen-Shannon, the paper) or "ce" (soft-label cross-entropy)
    # channels per stage of the surrogate's cnn (empty = the base's); it runs once per request,
    # so it may be wider than the base. Other widths than the base's train from scratch.
    widths: tuple[int, ...] = ()
    init_from_base: bool = True  # start from the base classifier's weights (same widths only)
    epochs: int = 6
    batch_size: int = 256
    lr: float = 0.05  # peak learning rate of the one-cycle schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    flip: bool = True  # horizontal flips (the counts of a mirrored image are close to equal)
    # online targets (0 = off): this fraction of every batch is replaced by crops and flips of
    # its images, each labelled there and then with the base's counts over online_samples draws
    online_samples: int = 0
    online_fraction: float = 0.5
    # max L2 norm of the gradient per step (0 = no clipping): a base imported with folded
    # BatchNorm has no batch statistics to tame its gradients, and diverges at lr >= 0.01
    grad_clip: float = 0.0
    threads: int = 0
    seed: int = 0
    # a trained surrogate graph (e.g. a committed bundle's surrogate.onnx, same arch and widths)
    # to import instead of training the network; a probe head is still trained on it
    from_onnx: str = ""
    # probe head (exporter/probes.py; 0 = off): the served surrogate also runs the base on this
    # many fixed noisy copies of the image (antithetic pairs drawn from probe_seed), and a small
    # MLP combines their votes and logits with the network's output. Costs K base passes.
    probes: int = 0
    probe_seed: int = 2026
    # "float16" rounds the probe noise to float16 when it is drawn (the head trains on those
    # values) and stores it so in the graph: half a probe graph's bytes, the same answers
    probe_noise_dtype: str = "float32"
    # where the head's training features run the K probe passes: "torch" (the base network) or
    # "onnxruntime" (its exported graph, parity-checked against it: about 4x the rate on a CPU;
    # the features agree to float rounding, so the head is not bit-for-bit torch's), or "int8"
    # (the surrogate graph up to the head, quantized as export.int8_surrogate, which it needs,
    # quantizes the served one: the heads learn the votes and logits the int8 graph serves)
    probe_runtime: str = "torch"
    # the served probabilities mix in this share of the probes' vote shares (0 = the head's
    # alone); set after training, it rebuilds the graph without training the head again
    vote_weight: float = 0.0
    head_hidden: int = 256  # units in each of the head's two hidden layers
    head_epochs: int = 30  # passes over the training images' features (computed once)
    head_lr: float = 2e-3  # peak learning rate of AdamW's one-cycle schedule
    # heads trained alike from seeds seed, seed + 1, ...; the graph serves their mean probabilities
    head_count: int = 1


@dataclass(frozen=True)
class CalibrateConfig:
    epsilon: float = 0.01  # bound on P(served certificate over-claims the Monte-Carlo one)
    batch_size: int = 1000  # noisy images per onnxruntime call
    seed: int = 1
    # Mondrian calibration (exporter.fidelity.fit_rule): candidate numbers of bins of the raw
    # bound, chosen on a selection part of the calibration images by mean certified accuracy
    # at selection_radii; (1,) with selection_fraction 0 is one shift fitted on every image
    bins: tuple[int, ...] = (1,)
    selection_fraction: float = 0.0
    selection_radii: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
    # candidate widths of a bin of its own at the top of the raw bound's range (Phi^-1 units
    # below the largest bound the protocol gives), each tried with every bin count above
    top_bins: tuple[float, ...] = ()


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 18  # ONNX opset of the TorchScript exporter (torch.onnx.export, dynamo=False)
    parity_images: int = 64  # real images compared between torch and onnxruntime
    parity_tolerance: float = 1e-4  # max abs difference allowed; export fails above it
    # int8 surrogate: after the float graph passes parity, its convolutions are quantized
    # (static, per channel, 7-bit weights so that CPUs without VNNI compute the same) with
    # activation ranges from the first `int8_images` training images; the stage fails when the
    # int8 graph names another class than the float one on more than `int8_max_disagreement`
    # of the parity images. The base graph, which Monte-Carlo samples, stays float.
    int8_surrogate: bool = False
    int8_images: int = 256
    int8_max_disagreement: float = 0.02
    # keep the convolutions that read the image itself (3 input channels, one per network and
    # per probe pass) in float32 in the int8 graph, their max-pooling moved before their ReLU
    # (the same function): onnxruntime's int8 kernels run those thin convolutions at a tenth
    # of their rate elsewhere, 0.97 -> 0.69 ms for a 16-probe graph (docs/results.md). Off for
    # the bundles quantized before it existed, so their recorded configs rebuild them as they are
    int8_float_image_convs: bool = False


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = 1000  # noisy images per onnxruntime call
    radii: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # table radii (L2, pixel units)
    seed: int = 2


@dataclass(frozen=True)
class HybridConfig:
    # the defaults are the server's (ACCSMOOTH_HYBRID_MARGIN, ACCSMOOTH_HYBRID_BUDGET_MS), so
    # the report measures what /certify?mode=hybrid serves out of the box
    margin: float = 0.05  # surrogate answers when its bound is this far from 1/2 (probability)
    budget_ms: float = 100.0  # Monte-Carlo fallback time budget per image, in milliseconds
    batch_size: int = 256  # noisy images per onnxruntime call (throughput, fallback CERTIFY)
    # table radii (L2, pixel units); each one also in evaluate.radii (the rows beside it)
    radii: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    seed: int = 0  # the fallback CERTIFY of image i draws its noise from seed [seed, i]


@dataclass(frozen=True)
class Config:
    bundle: BundleConfig = field(default_factory=BundleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train_base: TrainBaseConfig = field(default_factory=TrainBaseConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    train_surrogate: TrainSurrogateConfig = field(default_factory=TrainSurrogateConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(value, kind):
    """Parse an override string (or TOML value) into the field's declared type."""
    kind = str(kind)
    if isinstance(value, str):
        if kind == "bool":
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"expected true/false, got {value!r}")
            return value.lower() in ("true", "1")
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind.startswith("tuple"):
            cast = float if "float" in kind else int
            return tuple(cast(v) for v in value.strip("()[] ").split(",") if v.strip())
        return value
    if kind.startswith("tuple"):
        return tuple(value)
    if kind == "float":
        return float(value)
    return value


def recorded(manifest, section: str, where) -> dict:
    """The `section` table of the exporter config a bundle's manifest records."""
    values = ((manifest.exporter or {}).get("config") or {}).get(section)
    if not values:
        raise ValueError(f"{where}: its manifest records no exporter {section} config")
    return values


def read_section(cls, values: dict, where: str):
    """One config section (a dataclass) from a TOML table or a recorded config dict; fields it
    lacks take their defaults, fields it does not know are an error naming them."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(fields)}")
    return cls(**{k: _coerce(v, fields[k].type) for k, v in values.items()})


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The preset at `path` (TOML, one table per stage) with `section.field=value` overrides."""
    raw: dict = {}
    if path is not None:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ValueError(f"override {item!r} is not of the form section.field=value")
        raw.setdefault(section, {})[name] = value.strip()
    sections = {f.name: f.default_factory for f in dataclasses.fields(Config)}
    unknown = set(raw) - set(sections)
    if unknown:
        raise ValueError(f"unknown config section(s) {sorted(unknown)}; known: {sorted(sections)}")
    return Config(
        **{
            name: read_section(type(factory()), raw.get(name, {}), name)
            for name, factory in sections.items()
        }
    )
