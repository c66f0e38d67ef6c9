"""The Monte-Carlo chunks of `exporter.chunk_work`, run by PyTorch on a GPU (or any torch device).

Same arguments and results as `chunk_work.label_chunk` and `chunk_work.certify_chunk`, with the
base network as a torch module instead of an onnxruntime session, and the noise drawn on the
device: generating 10^8-10^9 Gaussian images with numpy on the host would cost far more than
the forward passes. The stream of chunk `index` is a device generator seeded from
`SeedSequence([seed, index])`, so a chunk's counts depend on its seed and inputs only (on one
device type; the draws differ from the numpy stream of the onnxruntime executor, which
`exporter.certify_images` records per chunk as its `sampler`).

Arithmetic is float32 with TF32 off (`exact_float32`): the counts are of the very function the
ONNX graph computes, up to the last bits of float32 rounding, not of a lower-precision cousin.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from exporter import chunk_work

SAMPLER = "torch"  # chunk files say which sampler drew them ("numpy" for onnxruntime chunks)


def exact_float32() -> None:
    """No TF32 in convolutions or matrix products (Ampere and later use it by default in cuDNN)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def generator(device: torch.device, seed: int, index: int) -> torch.Generator:
    """A device generator seeded from (seed, index), as `default_rng([seed, index])` is on host."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]
    return torch.Generator(device).manual_seed(int(state))


@torch.no_grad()
def sample_counts(
    net: torch.nn.Module,
    images: torch.Tensor,
    num: int,
    sigma: float,
    num_classes: int,
    batch_size: int,
    gen: torch.Generator,
) -> torch.Tensor:
    """Counts [M, K] of f(x_i + N(0, sigma^2 I)) over `num` draws each (images [M,3,H,W] float
    on the device), as `accsmooth.sampling.sample_counts` computes them on the host."""
    m = len(images)
    counts = torch.zeros(m * num_classes, dtype=torch.int64, device=images.device)
    total = m * num  # draw j belongs to image j // num
    for start in range(0, total, batch_size):
        who = torch.arange(start, min(start + batch_size, total), device=images.device) // num
        x = images[who]
        x.add_(torch.randn(x.shape, generator=gen, device=x.device), alpha=sigma)
        labels = net(x).argmax(1)
        counts.index_add_(0, who * num_classes + labels, torch.ones_like(labels))
    return counts.view(m, num_classes)


def _to_device(net: torch.nn.Module, images_uint8: np.ndarray) -> torch.Tensor:
    device = next(net.parameters()).device
    return torch.as_tensor(images_uint8).to(device).float().div_(255.0)


def label_chunk(
    net: torch.nn.Module,
    images_uint8: np.ndarray,
    *,
    index: int,
    seed: int,
    sigma: float,
    num_classes: int,
    num_samples: int,
    extra_samples: int,
    confident_fraction: float,
    batch_size: int,
) -> tuple[np.ndarray, int]:
    """`chunk_work.label_chunk` on the device: counts [M, K] and the number of draws."""
    x = _to_device(net, images_uint8)
    gen = generator(x.device, seed, index)

    def draw(rows, num):
        rows = rows if isinstance(rows, slice) else torch.as_tensor(rows, device=x.device)
        counts = sample_counts(net, x[rows], num, sigma, num_classes, batch_size, gen)
        return counts.cpu().numpy()

    return chunk_work.adaptive_counts(draw, num_samples, extra_samples, confident_fraction)


def certify_chunk(
    net: torch.nn.Module,
    images_uint8: np.ndarray,
    *,
    first: int,
    seed: int,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """`chunk_work.certify_chunk` on the device: counts0 [M,K], counts [M,K], seconds [M].

    The chunk's images share one stream (seeded by the chunk's first image) and their draws
    share batches: per-image streams would leave a GPU idle between 10^4-sample calls.
    CERTIFY's guarantee holds per image all the same, since every image's n0 and n draws are
    fresh and independent. `seconds` is the chunk's wall time split evenly over its images.
    """
    t0 = time.perf_counter()
    x = _to_device(net, images_uint8)
    k = int(net(x[:1]).shape[1])
    gen = generator(x.device, seed, first)
    counts0 = sample_counts(net, x, n0, sigma, k, batch_size, gen)
    counts = sample_counts(net, x, n, sigma, k, batch_size, gen)
    counts0, counts = counts0.cpu().numpy(), counts.cpu().numpy()
    seconds = np.full(len(x), (time.perf_counter() - t0) / len(x))
    return {"counts0": counts0, "counts": counts, "seconds": seconds}
