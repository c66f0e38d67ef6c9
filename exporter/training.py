"""Shared training machinery: batches from uint8 tensors, augmentation, checkpoints, progress.

Data stay one uint8 tensor in memory; a batch is taken by index, converted to [0,1] floats,
augmented on the tensor (random crop with 4-pixel zero padding, horizontal flip), then noised.
Checkpoints hold model, optimizer, scheduler, epoch and the stage config, so a killed run resumes
at the last finished epoch.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

log = logging.getLogger(__name__)


def augment(x: torch.Tensor, crop: bool, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crop and/or horizontal flip of a float batch [B,3,H,W]."""
    b, _, h, w = x.shape
    if flip:
        mask = torch.rand(b, generator=gen) < 0.5
        x = torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)
    if crop:
        padded = F.pad(x, (4, 4, 4, 4))
        dx, dy = torch.randint(0, 9, (2,), generator=gen).tolist()  # one shift per batch: cheap
        x = padded[:, :, dy : dy + h, dx : dx + w]
    return x


def one_cycle_sgd(model, c, steps_per_epoch: int, pct_start: float):
    """Nesterov SGD with a one-cycle learning rate over `c.epochs` epochs (c: a stage config)."""
    opt = torch.optim.SGD(
        model.parameters(), lr=c.lr, momentum=c.momentum, nesterov=True, weight_decay=c.weight_decay
    )
    total = c.epochs * steps_per_epoch
    return opt, torch.optim.lr_scheduler.OneCycleLR(
        opt, c.lr, total_steps=total, pct_start=pct_start
    )


def shuffled_batches(size: int, batch_size: int, seed: int, epoch: int):
    """(indices, generator) per full batch of a seeded per-epoch permutation: same on resume."""
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(size, generator=gen)
    for s in range(size // batch_size):
        yield order[s * batch_size : (s + 1) * batch_size], gen


def load_checkpoint(path: Path, model, optimizer=None, scheduler=None) -> int:
    """Restore a checkpoint if present; returns the number of finished epochs (0 if none)."""
    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    return int(state.get("epoch", 0))


def save_checkpoint(path: Path, model, optimizer, scheduler, epoch: int, extra: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            **extra,
        },
        tmp,
    )
    tmp.replace(path)  # atomic: a kill mid-save never leaves a half-written checkpoint


def run_epochs(
    *,
    model,
    optimizer,
    scheduler,
    epochs,
    start_epoch,
    steps,
    loss_fn,
    ckpt,
    extra,
    desc,
    on_epoch_end=None,
    frozen_norm=False,
    grad_clip=0.0,
):
    """The loop: for each epoch, `steps(epoch)` yields (inputs, targets); checkpoint per epoch."""
    for epoch in range(start_epoch, epochs):
        model.train()
        if frozen_norm:  # BatchNorm keeps its running statistics: eval mode, weights still train
            for module in model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        seen, loss_sum, correct, t0 = 0, 0.0, 0, time.perf_counter()
        bar = tqdm(steps(epoch), desc=f"{desc} {epoch + 1}/{epochs}", mininterval=5, leave=False)
        for inputs, targets in bar:
            out = model(inputs)
            loss = loss_fn(out, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            scheduler.step()
            seen += len(inputs)
            loss_sum += loss.item() * len(inputs)
            hard = targets if targets.ndim == 1 else targets[:, : out.shape[1]].argmax(1)
            correct += (out.argmax(1) == hard).sum().item()
            bar.set_postfix(
                loss=f"{loss_sum / seen:.3f}",
                acc=f"{correct / seen:.3f}",
                img_s=f"{seen / (time.perf_counter() - t0):.0f}",
                refresh=False,
            )
        elapsed = time.perf_counter() - t0
        msg = (
            f"{desc} epoch {epoch + 1}/{epochs}: loss {loss_sum / seen:.4f} "
            f"train-acc {correct / seen:.4f} {seen / elapsed:.0f} img/s {elapsed:.0f}s"
        )
        if on_epoch_end is not None:
            msg += " " + on_epoch_end(model)
        log.info(msg)
        save_checkpoint(ckpt, model, optimizer, scheduler, epoch + 1, extra)
