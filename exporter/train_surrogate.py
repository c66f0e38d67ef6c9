"""Stage 4, train-surrogate: a network that maps x to its Monte-Carlo class frequencies.

Accelerated Smoothing: the surrogate h is trained on clean images with targets counts / N from
the targets stage, under the Jensen-Shannon divergence between softmax(h(x)) and the targets
(or soft-label cross-entropy with `loss = "ce"`). It starts from the base classifier's weights
by default: f already knows the classes, h only has to learn how confident f is under noise.
`widths` makes it wider than f instead (trained from scratch): it runs once per request, not
10^4 times, so it can afford it. Where the targets stage labelled mirror images, it trains on
those too, each with its own counts.
Reads the base checkpoint (`train_base.load`) and the counts (`targets.load`).
Artifact: the network in both forms, `<work>/surrogate.pt` (resumable per epoch) and
`<work>/surrogate.onnx` (ends in a softmax; converted when training ends and parity-checked
against torch, see `exporter.onnx_export`), read through `graph(work)`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from exporter import data as data_stage
from exporter import models, onnx_export, targets, train_base
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
CHECKPOINT, GRAPH = "surrogate.pt", "surrogate.onnx"


def graph(work: Path) -> Path:
    """surrogate.onnx, the graph calibrate scores and the bundle serves (not older than
    surrogate.pt)."""
    return onnx_export.current_graph(work / CHECKPOINT, work / GRAPH, "train-surrogate")


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


def run(cfg: Config, work: Path) -> Path:
    c = cfg.train_surrogate
    if c.threads:
        torch.set_num_threads(c.threads)
    ds = data_stage.load(work)
    counts = targets.load(work)
    images = targets.labelled_images(work, ds.train.images)  # with mirrors when labelled
    originals = len(images) // 2 if len(images) > len(ds.train.images) else len(images)
    draws = counts.sum(1, keepdims=True)  # N per image: adaptive N gives confident ones more
    freqs = torch.as_tensor(counts / draws, dtype=torch.float32)
    fit_to = freqs
    if c.loss in WITH_DRAW_COUNTS:
        fit_to = torch.cat([freqs, torch.as_tensor(draws, dtype=torch.float32)], dim=1)
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

    def steps(epoch):
        for idx, gen in shuffled_batches(len(y_all), c.batch_size, c.seed, epoch):
            yield augment(x_all[idx].float() / 255.0, False, c.flip, gen), y_all[idx]

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
    onnx_export.write_graph(ckpt, "surrogate", work / GRAPH, cfg.export, ds.calib.images)
    return ckpt
