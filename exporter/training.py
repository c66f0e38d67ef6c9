"""Shared training machinery: batches from uint8 tensors, augmentation, checkpoints, progress.

Data stay one uint8 tensor in memory; a batch is taken by index, converted to [0,1] floats,
augmented on the tensor (random crop with 4-pixel zero padding, horizontal flip), then noised.
Checkpoints hold model, optimizer, scheduler, epoch and the stage config, so a killed run resumes
at the last finished epoch. Training runs on `device()`: the CPU unless `using_device` names
another (`python -m exporter run --device cuda`, or `auto`: a GPU where torch sees one). Batches
are drawn on the host, as on the CPU, and moved to the device, so a seed gives the same batches
on either.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

log = logging.getLogger(__name__)

_device: ContextVar[str] = ContextVar("exporter_device", default="cpu")


def resolve_device(name: str) -> str:
    """The torch device `name` means: "auto" is "cuda" where torch sees a GPU, else "cpu"."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def device() -> torch.device:
    """The device the training stages run on (see `using_device`)."""
    return torch.device(_device.get())


@contextlib.contextmanager
def using_device(name: str) -> Iterator[torch.device]:
    """Train on `name` ("cpu", "cuda", "cuda:1", "auto") inside this block."""
    token = _device.set(resolve_device(name))
    try:
        yield device()
    finally:
        _device.reset(token)


def augment(x: torch.Tensor, crop: bool, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crop and/or horizontal flip of a float batch [B,3,H,W]."""
    b, _, h, w = x.shape
    if flip:
        mask = (torch.rand(b, generator=gen) < 0.5).to(x.device)
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
    state = torch.load(path, map_location=next(model.parameters()).device, weights_only=False)
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
    """The loop: for each epoch, `steps(epoch)` yields (inputs, targets); checkpoint per epoch.
    Runs on the device of the model's parameters; each batch is moved there."""
    on = next(model.parameters()).device
    for epoch in range(start_epoch, epochs):
        model.train()
        if frozen_norm:  # BatchNorm keeps its running statistics: eval mode, weights still train
            for module in model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        seen, loss_sum, correct, t0 = 0, 0.0, 0, time.perf_counter()
        bar = tqdm(steps(epoch), desc=f"{desc} {epoch + 1}/{epochs}", mininterval=5, leave=False)
        for inputs, targets in bar:
            inputs, targets = inputs.to(on, non_blocking=True), targets.to(on, non_blocking=True)
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
