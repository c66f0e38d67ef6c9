"""Stage 2, train-base: the base classifier f, trained under Gaussian noise (Cohen et al.).

Every training image is seen as x + N(0, sigma^2 I) in [0,1]-pixel space (after crop/flip), so
f learns to classify noisy inputs, which is what the smoothed classifier g asks of it.
Artifact: `<work>/base.pt` (weights, normalization, arch, config, finished epochs; resumable),
read through `load(work)` and `network(work)`. Its ONNX form, the graph every Monte-Carlo stage
samples and the bundle serves, is the next stage's artifact (export-base, `exporter.onnx_export`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from exporter import data as data_stage
from exporter import models
from exporter.config import Config
from exporter.training import (
    augment,
    device,
    load_checkpoint,
    one_cycle_sgd,
    run_epochs,
    shuffled_batches,
)

log = logging.getLogger(__name__)
CHECKPOINT = "base.pt"


def load(work: Path) -> dict:
    """The base.pt checkpoint: `model` (state dict), arch, widths, num_classes, mean, std,
    sigma, config, epoch (and `folded_batchnorm` when imported from ONNX)."""
    path = work / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run the train-base stage first")
    return torch.load(path, map_location="cpu", weights_only=False)


def network(work: Path) -> torch.nn.Module:
    """The trained base classifier, in eval mode."""
    return models.from_checkpoint(work / CHECKPOINT)


@torch.no_grad()
def noisy_accuracy(model, images_uint8, labels, sigma: float, seed: int = 0) -> float:
    """Accuracy of f on one noisy copy of each image (a quick proxy for smoothed accuracy)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    for i in range(0, len(images_uint8), 500):
        x = torch.as_tensor(images_uint8[i : i + 500]).float() / 255.0
        x = x + sigma * torch.randn(x.shape, generator=gen)
        predicted = model(x.to(next(model.parameters()).device)).argmax(1).cpu().numpy()
        correct += (predicted == labels[i : i + 500]).sum()
    return float(correct) / len(labels)


def network_from_onnx(source: Path, arch: str, widths) -> tuple:
    """(network in eval mode, mean, std, num_classes) of a `cnn` graph the exporter wrote (the
    base's logits, or a surrogate's, whose final softmax is left out), BatchNorms folded as
    `import_onnx` says."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(source).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    (gemm,) = [node for node in graph.node if node.op_type == "Gemm"]
    # Normalize is the first layer: (x - mean) / std, whatever the wrapper prefixed to the names
    (sub,) = [node for node in graph.node if node.op_type == "Sub"]
    (div,) = [node for node in graph.node if node.op_type == "Div"]
    mean = init[sub.input[1]].reshape(-1).tolist()
    std = init[div.input[1]].reshape(-1).tolist()
    num_classes = init[gemm.input[2]].shape[0]
    model = models.build(arch, widths, num_classes, mean, std)
    conv_layers = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    if len(conv_layers) != len(convs):
        raise ValueError(
            f"{source}: {len(convs)} convolutions, the {arch} config has "
            f"{len(conv_layers)}; set the widths to the graph's"
        )
    with torch.no_grad():
        for node, conv, norm in zip(convs, conv_layers, norms, strict=True):
            conv.weight.copy_(torch.tensor(init[node.input[1]]))
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0)
            norm.weight.fill_(float(np.sqrt(1.0 + norm.eps)))
            norm.bias.copy_(torch.tensor(init[node.input[2]]))
        linear.weight.copy_(torch.tensor(init[gemm.input[1]]))
        linear.bias.copy_(torch.tensor(init[gemm.input[2]]))
    return model.eval(), mean, std, num_classes


def import_onnx(cfg: Config, work: Path) -> Path:
    """base.pt from a trained `cnn` graph (`train_base.from_onnx`). The export-base stage then
    copies that very graph as the base graph, so every Monte-Carlo result is of the file the old
    bundle served.

    The exporter folds each BatchNorm into its convolution; here each BatchNorm becomes the
    identity plus the folded bias (mean 0, var 1, weight sqrt(1 + eps)), which computes the same
    function in eval mode. `folded_batchnorm` in the checkpoint tells the surrogate stage to keep
    those layers in eval mode while fine-tuning (batch statistics would undo the folding).
    """
    c, source = cfg.train_base, Path(cfg.train_base.from_onnx)
    model, mean, std, num_classes = network_from_onnx(source, c.arch, c.widths)
    ckpt = work / CHECKPOINT
    torch.save(
        {
            "model": model.state_dict(),
            "epoch": c.epochs,
            "arch": c.arch,
            "widths": list(c.widths),
            "num_classes": num_classes,
            "mean": mean,
            "std": std,
            "sigma": cfg.bundle.sigma,
            "config": cfg.to_dict(),
            "imported_from": str(source),
            "folded_batchnorm": True,
        },
        ckpt,
    )
    log.info("train-base: imported %s (%d classes) instead of training", source, num_classes)
    return ckpt


def run(cfg: Config, work: Path) -> Path:
    c, sigma = cfg.train_base, cfg.bundle.sigma
    if c.from_onnx:
        return import_onnx(cfg, work)
    if c.threads:
        torch.set_num_threads(c.threads)
    ds = data_stage.load(work)
    torch.manual_seed(c.seed)
    mean, std = models.channel_stats(ds.train.images)
    model = models.build(c.arch, c.widths, len(ds.classes), mean, std).to(device())
    steps_per_epoch = len(ds.train.labels) // c.batch_size
    opt, sched = one_cycle_sgd(model, c, steps_per_epoch, pct_start=0.25)
    ckpt = work / CHECKPOINT
    start = load_checkpoint(ckpt, model, opt, sched)
    if start:
        log.info("train-base: resuming after epoch %d of %d", start, c.epochs)
    x_all = torch.as_tensor(ds.train.images).to(device())
    y_all = torch.as_tensor(ds.train.labels).to(device())

    def steps(epoch):
        for idx, gen in shuffled_batches(len(y_all), c.batch_size, c.seed, epoch):
            x = augment(x_all[idx].float() / 255.0, c.augment, c.augment, gen)
            noise = torch.randn(x.shape, generator=gen).to(x.device)
            yield x + sigma * noise, y_all[idx]

    extra = {
        "arch": c.arch,
        "widths": list(c.widths),
        "num_classes": len(ds.classes),
        "mean": mean,
        "std": std,
        "sigma": sigma,
        "config": cfg.to_dict(),
    }
    run_epochs(
        model=model,
        optimizer=opt,
        scheduler=sched,
        epochs=c.epochs,
        start_epoch=start,
        steps=steps,
        loss_fn=F.cross_entropy,
        ckpt=ckpt,
        extra=extra,
        desc="train-base",
        on_epoch_end=lambda m: (
            f"noisy-acc(calib) {noisy_accuracy(m, ds.calib.images, ds.calib.labels, sigma):.4f}"
        ),
    )
    return ckpt
