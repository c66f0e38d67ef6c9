"""Stage 5, train-surrogate: a network that maps x to its Monte-Carlo class frequencies.

Accelerated Smoothing: the surrogate h is trained on clean images with targets counts / N from
the targets stage, under the Jensen-Shannon divergence between softmax(h(x)) and the targets
(or soft-label cross-entropy with `loss = "ce"`). It starts from the base classifier's weights
by default: f already knows the classes, h only has to learn how confident f is under noise.
`widths` makes it wider than f instead (trained from scratch): it runs once per request, not
10^4 times, so it can afford it. Where the targets stage labelled mirror images, it trains on
those too, each with its own counts. `online_samples` labels part of every batch during
training instead: crops and flips of the training images, each with the base's counts over that
many noisy draws (`online_labeller`; a GPU's work).
Reads the base checkpoint (`train_base.load`) and the counts (`targets.load`).
Artifact: `<work>/surrogate.pt` (resumable per epoch). Its ONNX form (ends in a softmax), the
graph calibrate scores and the bundle serves, is the next stage's artifact (export-surrogate,
`exporter.onnx_export`).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from accsmooth.bundle import sha256_of
from exporter import data as data_stage
from exporter import models, onnx_export, probes, targets, torch_work, train_base
from exporter.certify_images import images_digest
from exporter.config import Config
from exporter.losses import LOSSES, WITH_DRAW_COUNTS, js_divergence
from exporter.training import (
    augment,
    device,
    load_checkpoint,
    one_cycle_sgd,
    run_epochs,
    shuffled_batches,
)

log = logging.getLogger(__name__)
CHECKPOINT = "surrogate.pt"
PROBE_FEATURES = "probe_features.pt"  # the probe head's training features, cached
PROBE_RUNTIMES = ("torch", "onnxruntime", "int8")  # train_surrogate.probe_runtime's values
ONLINE_BATCH = 32_768  # noisy images per forward pass of the base when labelling online


@torch.no_grad()
def held_out_summary(model, images_uint8, freqs, draws) -> str:
    """JS divergence and the mean |error| of Phi^-1(p_top), the scale radii live on, on images
    the surrogate was not fitted to (targets smoothed as in the probit loss)."""
    model.eval()
    x = torch.as_tensor(images_uint8).float() / 255.0
    logits = model(x.to(next(model.parameters()).device)).cpu()
    q = torch.as_tensor(freqs)
    top = q.argmax(1, keepdim=True)
    n = torch.as_tensor(draws, dtype=torch.float32).view(-1)
    q_top = (q.gather(1, top).squeeze(1) * n + 0.5) / (n + 1.0)
    p_top = torch.softmax(logits, 1).gather(1, top).squeeze(1).clamp(1e-6, 1 - 1e-6)
    probit = (torch.special.ndtri(p_top) - torch.special.ndtri(q_top)).abs().mean()
    return f"held-out JS {float(js_divergence(logits, q)):.4f} probit MAE {float(probit):.3f}"


def online_labeller(cfg: Config, work: Path):
    """label(images, noise) -> targets for images made during training (crops and flips of
    the training images): the base's counts over `online_samples` noisy draws each, drawn on
    the training device from the generator `noise` (one per epoch, seeded by (seed, epoch), so
    a resumed run draws what an uninterrupted one would), in the loss's target layout.
    Fresh images and fresh noise every epoch: the surrogate never sees the same target twice,
    and no augmentation borrows counts drawn for another image. One batch costs
    batch_size * online_fraction * online_samples forward passes of the base (a GPU's work)."""
    c, sigma = cfg.train_surrogate, cfg.bundle.sigma
    base, k = train_base.network(work).to(device()), int(train_base.load(work)["num_classes"])

    def label(images: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
        counts = torch_work.sample_counts(
            base, images, c.online_samples, sigma, k, ONLINE_BATCH, noise
        )
        freqs = counts.float() / c.online_samples
        if c.loss in WITH_DRAW_COUNTS:
            n = torch.full((len(images), 1), float(c.online_samples), device=images.device)
            freqs = torch.cat([freqs, n], dim=1)
        return freqs

    return label


def fit_to_targets(counts: np.ndarray, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(frequencies [M,K], what the loss fits [M,K] or [M,K+1] with N per row) of counts."""
    draws = counts.sum(1, keepdims=True)  # N per image: adaptive N gives confident ones more
    freqs = torch.as_tensor(counts / draws, dtype=torch.float32)
    if loss in WITH_DRAW_COUNTS:
        return freqs, torch.cat([freqs, torch.as_tensor(draws, dtype=torch.float32)], dim=1)
    return freqs, freqs


def import_onnx(cfg: Config, work: Path) -> Path:
    """surrogate.pt from a trained surrogate graph (`train_surrogate.from_onnx`), its network
    finished (epoch = epochs), BatchNorms folded as `train_base.import_onnx` says."""
    c, base = cfg.train_surrogate, train_base.load(work)
    ckpt, source_sha = work / CHECKPOINT, sha256_of(Path(c.from_onnx))
    if ckpt.exists():  # imported before from the same bytes: keep it (and a head trained on it)
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if state.get("imported_sha256") == source_sha:
            return ckpt
    widths = list(c.widths) or list(base["widths"])
    model, mean, std, num_classes = train_base.network_from_onnx(
        Path(c.from_onnx), base["arch"], widths
    )
    extra = {key: base[key] for key in ("arch", "sigma")}
    extra |= {"num_classes": num_classes, "mean": mean, "std": std, "widths": widths}
    extra |= {"loss": c.loss, "config": cfg.to_dict(), "imported_from": c.from_onnx}
    extra |= {"imported_sha256": source_sha}
    torch.save({"model": model.state_dict(), "epoch": c.epochs, **extra}, ckpt)
    log.info("train-surrogate: imported %s instead of training the network", c.from_onnx)
    return ckpt


def add_probe_head(cfg: Config, work: Path, ckpt: Path) -> Path:
    """Train the probe head (`exporter.probes`) over the finished network in `ckpt` and the
    base, on the training images' targets, and store it in `ckpt`; a head already stored there
    for the same settings is kept."""
    c = cfg.train_surrogate
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    settings = {
        "k": c.probes,
        "seed": c.probe_seed,
        "hidden": c.head_hidden,
        "epochs": c.head_epochs,
        "lr": c.head_lr,
    }
    if c.probe_noise_dtype != "float32":  # heads trained before the setting existed still match
        settings["noise_dtype"] = c.probe_noise_dtype
    if c.head_count != 1:  # likewise
        settings["heads"] = c.head_count
    if _check_probe_runtime(cfg) == "int8":  # likewise; the float runtimes agree to rounding
        settings["runtime"] = "int8"
        if cfg.export.int8_float_image_convs:  # likewise: other int8 features
            settings["int8_float_image_convs"] = True
    if not 0.0 <= c.vote_weight <= 1.0:
        raise ValueError(f"train_surrogate.vote_weight must be in [0, 1], not {c.vote_weight}")
    stored = state.get("probe_head", {})
    if stored.get("settings") == settings:
        log.info("train-surrogate: probe head already trained (%s)", settings)
        if stored.get("vote_weight", 0.0) != c.vote_weight:
            stored["vote_weight"] = c.vote_weight
            _save(state, ckpt)
            log.info("train-surrogate: vote weight %g stored in %s", c.vote_weight, ckpt.name)
        return ckpt
    ds = data_stage.load(work)
    images = targets.labelled_images(work, ds.train.images)
    base_state = train_base.load(work)
    base = train_base.network(work)
    network = models.from_state(state)
    shape = tuple(int(v) for v in images.shape[1:])
    noise_args = {"k": c.probes, "shape": shape, "sigma": cfg.bundle.sigma, "seed": c.probe_seed}
    noise_args |= {"dtype": c.probe_noise_dtype}
    int8 = ds.train.images if c.probe_runtime == "int8" else None
    feats = _head_features(cfg, work, (network, base), noise_args, images, int8)
    _, fit_to = fit_to_targets(targets.load(work), "ce_probit_censored")
    head = probes.fit_heads(
        feats,
        fit_to,
        count=c.head_count,
        hidden=c.head_hidden,
        epochs=c.head_epochs,
        lr=c.head_lr,
        seed=c.seed,
        batch_size=c.batch_size,
        watch=min(1000, len(feats) // 50),  # as the network's fit: the last 2%, at most 1,000
    )
    meta = {key: base_state[key] for key in ("arch", "widths", "num_classes", "mean", "std")}
    stored = probes.head_state(head, base, meta, noise_args, c.vote_weight)
    state["probe_head"] = stored | {"settings": settings}
    _save(state, ckpt)
    log.info("train-surrogate: probe head over %d probes stored in %s", c.probes, ckpt.name)
    return ckpt


def _head_features(cfg: Config, work: Path, networks, noise_args: dict, images, int8_images):
    """The head's training features, kept in <work>/probe_features.pt under a key of everything
    they depend on (both networks' weights, the probes, the images, the precision), so a head
    trained again with other settings does not run the K probe passes again (26 min for 49,500
    images at K = 512 on the 2-core VM). In float32 (`probes.probe_features`); or, with
    `int8_images` (the training images the int8 graph's ranges come from; probe_runtime
    "int8"), as the int8 graph computes them (`onnx_export.int8_features_graph`), so that its
    heads learn the votes and logits that graph serves, not the float32 ones it moves."""
    network, base = networks
    key = {
        "network": _weights_digest(network),
        "base": _weights_digest(base),
        "noise": noise_args,
        "images": images_digest(images),
    }
    if int8_images is not None:  # float32 features keep the key they had before int8 ones
        used = int8_images[: cfg.export.int8_images]
        key["int8"] = {"images": images_digest(used), "onnxruntime": ort.__version__}
        if cfg.export.int8_float_image_convs:  # int8 features cached before it keep their key
            key["int8"]["float_image_convs"] = True
    path = work / PROBE_FEATURES
    if path.exists():
        stored = torch.load(path, map_location="cpu", weights_only=False)
        if stored.get("key") == key:
            log.info("train-surrogate: probe features read from %s", path.name)
            return stored["features"]
    noise = probes.probe_noise(**noise_args)
    if int8_images is None:
        graph = _probe_graph(cfg.train_surrogate, work)
        feats = probes.probe_features(network, base, noise, images, graph)
    else:
        graph = work / "probe_features.int8.onnx"
        net = probes.ProbeFeatures(network, base, noise).eval()
        try:
            onnx_export.int8_features_graph(net, graph, cfg.export, int8_images)
            feats = probes.graph_features(graph, images, noise_args["k"])
        finally:
            graph.unlink(missing_ok=True)
    _save({"key": key, "features": feats}, path)
    return feats


def _weights_digest(network: torch.nn.Module) -> str:
    """sha256 over the bytes of every tensor of `network`'s state, in its order."""
    h = hashlib.sha256()
    for tensor in network.state_dict().values():
        h.update(tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def _save(state: dict, ckpt: Path) -> None:
    tmp = ckpt.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(ckpt)


def _check_probe_runtime(cfg: Config) -> str:
    """`train_surrogate.probe_runtime`, once known to be one of PROBE_RUNTIMES and, if "int8",
    to go with an int8 surrogate graph; else ValueError."""
    runtime = cfg.train_surrogate.probe_runtime
    if runtime not in PROBE_RUNTIMES:
        raise ValueError(
            f"train_surrogate.probe_runtime must be one of {PROBE_RUNTIMES}, not {runtime!r}"
        )
    if runtime == "int8" and not cfg.export.int8_surrogate:
        raise ValueError(
            'train_surrogate.probe_runtime = "int8" trains the heads on the int8 graph\'s'
            " features: it needs export.int8_surrogate = true, or they would be served"
            " float32 ones"
        )
    return runtime


def _probe_graph(c, work: Path) -> Path | None:
    """The base graph float32 probe passes run on (`train_surrogate.probe_runtime`), or None:
    torch."""
    return onnx_export.graph(work, "base") if c.probe_runtime == "onnxruntime" else None


def run(cfg: Config, work: Path) -> Path:
    c = cfg.train_surrogate
    if c.threads:
        torch.set_num_threads(c.threads)
    ckpt = train_network(cfg, work) if not c.from_onnx else import_onnx(cfg, work)
    return add_probe_head(cfg, work, ckpt) if c.probes else ckpt


def train_network(cfg: Config, work: Path) -> Path:
    """surrogate.pt: the network h fine-tuned (or trained) on the targets, per epoch."""
    c = cfg.train_surrogate
    ds = data_stage.load(work)
    counts = targets.load(work)
    images = targets.labelled_images(work, ds.train.images)  # with mirrors when labelled
    originals = len(images) // 2 if targets.load_meta(work).get("flipped") else len(images)
    draws = counts.sum(1, keepdims=True)
    freqs, fit_to = fit_to_targets(counts, c.loss)
    base = train_base.load(work)
    widths = list(c.widths) or list(base["widths"])
    if c.init_from_base and widths != list(base["widths"]):
        raise ValueError(
            f"train_surrogate.widths {widths} differ from the base's {base['widths']}: "
            "set train_surrogate.init_from_base = false to train it from scratch"
        )
    torch.manual_seed(c.seed)
    model = models.build(base["arch"], widths, base["num_classes"], base["mean"], base["std"])
    if c.init_from_base:
        model.load_state_dict(base["model"])
    model.to(device())
    # the last 2% of training images (at most 1,000) stay out of the fit, with their mirrors:
    # a held-out JS loss (targets may cover only the first images: targets.max_images)
    held = min(1000, max(1, originals // 50))
    source = np.arange(len(images)) % originals  # the training image each row shows
    fit = np.flatnonzero(source < originals - held)
    watch = np.arange(originals - held, originals)
    # on the training device: a GPU then indexes its batches itself, with no host round trip
    x_all = torch.as_tensor(images[fit]).to(device())
    y_all = fit_to[fit].to(device())
    steps_per_epoch = len(y_all) // c.batch_size
    opt, sched = one_cycle_sgd(model, c, steps_per_epoch, pct_start=0.2)
    ckpt = work / CHECKPOINT
    start = load_checkpoint(ckpt, model, opt, sched)

    label = online_labeller(cfg, work) if c.online_samples else None

    def steps(epoch):
        noise = torch_work.generator(device(), c.seed, epoch) if label else None
        for idx, gen in shuffled_batches(len(y_all), c.batch_size, c.seed, epoch):
            x, y = augment(x_all[idx].float() / 255.0, False, c.flip, gen), y_all[idx]
            if label is not None:  # part of the batch: new images, labelled now
                k = int(round(c.online_fraction * len(idx)))
                fresh = augment(x[:k], True, True, gen)
                x, y = torch.cat([fresh, x[k:]]), torch.cat([label(fresh, noise), y[k:]])
            yield x, y

    extra = {key: base[key] for key in ("arch", "num_classes", "mean", "std", "sigma")}
    extra |= {"widths": widths, "loss": c.loss, "config": cfg.to_dict()}
    watch_x, watch_y = images[watch], freqs[watch].numpy()
    run_epochs(
        model=model,
        optimizer=opt,
        scheduler=sched,
        epochs=c.epochs,
        start_epoch=start,
        steps=steps,
        loss_fn=LOSSES[c.loss],
        ckpt=ckpt,
        extra=extra,
        desc="train-surrogate",
        # an imported base has its BatchNorms folded to identities: batch statistics would
        # undo that, so they stay in eval mode (their scale and bias still train)
        frozen_norm=bool(base.get("folded_batchnorm")),
        grad_clip=c.grad_clip,
        on_epoch_end=lambda m: held_out_summary(m, watch_x, watch_y, draws[watch]),
    )
    return ckpt
