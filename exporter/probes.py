"""The probe head: a surrogate that also looks at K fixed noisy copies of its input.

One pass of the surrogate network sees the clean image only, and on unseen images its estimate
of Phi^-1(p_A), the scale radii live on, is off by 0.34 (standard deviation, the 1.1.0 bundle's
calibration images); the calibration shift that keeps over-claims under epsilon is set by the
tail of that error. K passes of the base on noisy copies of the image measure p_A directly, but
K votes alone are coarse (1/K). The probe surrogate combines both: K noise images delta_1..K are
drawn once from a seed (antithetic pairs, delta and -delta, which cancels the first-order part
of their sampling error), stored in the graph, and for an image x

    b_k      = f(x + delta_k)                 the base's logits on each probe, [K, C]
    features = log h(x), and per class: the mean softmax of b_k, the mean log-softmax, the
               share of votes (argmax b_k) and the spread of the logits over the K probes
    logits   = log h(x) + MLP(features)       served as softmax(logits)

where h is the surrogate network. The MLP's last layer starts at zero, so before training the
probe surrogate is h. With a vote weight w > 0 the graph serves w * (vote shares) + (1 - w) *
softmax(logits) instead: at K = 256 the head alone reads the probes' votes less sharply than
they measure p_A (its calibration shifts stay at 0.3-0.45), and half of each is what the
calibration cross-fit prefers (docs/results.md); at K = 16 the votes are too coarse, and w = 0.
The weight is one named constant of the graph (VOTE_WEIGHT), so `with_vote_weight` serves
another mix from the same graph, and `exporter.vote_weight` scores the candidates on a bundle's
calibration images. The noise may be drawn and stored in float16 (`store_noise_half`): half the
graph's bytes, the same answers. Several heads trained from consecutive seeds may serve the mean
of their probabilities (`HeadMean`, `train_surrogate.head_count`).
It is still a deterministic function of x (the noise is a constant of the
graph, the same for every request), so calibration and its guarantee apply unchanged, and the
server serves it as any surrogate graph (`images` -> `probabilities`). It costs K passes of the
base at batch K besides the surrogate's: the whole K = 16 graph takes 1.46 ms at batch 1 on one
onnxruntime thread of the 2-core VM and 0.79 ms on two (0.90 / 0.60 ms with its convolutions in
int8, `export.int8_surrogate`; the network alone: 0.09 ms).

`fit_head` trains the head on the training images' targets with h and f frozen, so their
outputs on the training images are computed once (`probe_features`) and the head trains on
them in seconds per epoch. Its loss (`exporter.losses.censored_probit_cross_entropy`) weighs
the probit error as much as the cross-entropy and treats all-votes targets as "at least".
The train-surrogate stage calls it when `train_surrogate.probes` > 0 and stores the head, the
noise seed and the base's weights in surrogate.pt, so the checkpoint alone rebuilds the graph
(`from_checkpoint`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from tqdm import tqdm

from accsmooth.runtime import OnnxPredictor, make_session
from exporter import models
from exporter.data import to_float
from exporter.losses import censored_probit_cross_entropy

log = logging.getLogger(__name__)
FEATURE_BATCH = 256  # clean images per forward pass when computing the training features
GRAPH_BATCH = 1024  # noisy images per onnxruntime call (K probes of FEATURE_BATCH images: many)
VOTE_WEIGHT = "vote_weight"  # the name of the mixing weight's initializer in a probe graph
HALF_NOISE = "probe_noise_float16"  # the noise's initializer in a graph that stores it in float16


NOISE_DTYPES = ("float32", "float16")


def probe_noise(
    k: int, shape: tuple[int, ...], sigma: float, seed: int, dtype: str = "float32"
) -> np.ndarray:
    """K fixed noise images N(0, sigma^2 I) of `shape` [C,H,W], in antithetic pairs: the second
    half is the first half negated (an odd K keeps one unpaired draw last). With `dtype`
    "float16" each value is rounded to the nearest float16 (returned as float32): what a graph
    storing the noise in half the bytes computes with, so the head trains on the same probes."""
    if k < 1:
        raise ValueError(f"probes must be at least 1, got {k}")
    if dtype not in NOISE_DTYPES:
        raise ValueError(f"probe noise dtype must be one of {NOISE_DTYPES}, not {dtype!r}")
    draws = np.random.default_rng(seed).standard_normal((k - k // 2, *shape)).astype(np.float32)
    paired = np.concatenate([draws[: k // 2], -draws[: k // 2], draws[k // 2 :]])
    return (np.float32(sigma) * paired).astype(dtype).astype(np.float32)


def features(surrogate_probs: torch.Tensor, probe_logits: torch.Tensor) -> torch.Tensor:
    """[B, 5C]: log h(x), then per class over the K probes [B, K, C]: mean softmax, mean
    log-softmax, vote share, logit standard deviation."""
    top = probe_logits.max(dim=-1, keepdim=True).values
    votes = (probe_logits == top).float()  # one-hot argmax (a tie, measure zero, counts twice)
    return torch.cat(
        [
            torch.log(surrogate_probs.clamp_min(1e-7)),
            probe_logits.softmax(-1).mean(1),
            probe_logits.log_softmax(-1).mean(1),
            votes.mean(1),
            probe_logits.std(1),
        ],
        dim=1,
    )


def probe_logits(base: nn.Module, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """[B, K, C]: the base's logits on x + delta_k for each of the K probes `noise` [K,C,H,W]."""
    noisy = (x.unsqueeze(1) + noise.unsqueeze(0)).reshape(-1, *x.shape[1:])
    return base(noisy).reshape(x.shape[0], noise.shape[0], -1)


def features_of(surrogate: nn.Module, base: nn.Module, noise: torch.Tensor, x: torch.Tensor):
    """`features` of images x [B,C,H,W] under the surrogate network h and the base f on the
    probes `noise` [K,C,H,W] (any float dtype): the input of the head."""
    return features(surrogate(x).softmax(1), probe_logits(base, x, noise.float()))


class ProbeFeatures(nn.Module):
    """images [B,C,H,W] -> `features` [B, 5C]: a probe surrogate's computation up to its head.
    Exported and quantized as the int8 surrogate graph is, it gives the features that graph's
    heads read (`exporter.onnx_export.int8_features_graph`, `graph_features`)."""

    def __init__(self, surrogate: nn.Module, base: nn.Module, noise: np.ndarray):
        super().__init__()
        self.surrogate, self.base = surrogate, base
        self.register_buffer("noise", torch.as_tensor(noise))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return features_of(self.surrogate, self.base, self.noise, x)


class ProbeHead(nn.Module):
    """logits = log h(x) + MLP(features); the input is `features(...)` [B, 5C]."""

    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.num_classes = num_classes
        self.mlp = nn.Sequential(
            nn.Linear(5 * num_classes, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
        nn.init.zeros_(self.mlp[-1].weight)  # starts as the surrogate network itself
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats[:, : self.num_classes] + self.mlp(feats)

    def probabilities(self, feats: torch.Tensor) -> torch.Tensor:
        return self(feats).softmax(1)


class HeadMean(nn.Module):
    """Several heads, trained alike from other seeds, serving the mean of their probabilities:
    each head's error on unseen images is partly its own, and the mean's tail is shorter (on
    sigma 0.25's calibration images, five heads cross-fit 0.3869 against 0.3845-0.3865 for
    one; docs/results.md). A head of 256 units costs about 80,000 multiply-adds per image, the
    K = 512 probe passes 4.5 billion."""

    def __init__(self, heads: list[ProbeHead]):
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.num_classes = heads[0].num_classes

    def probabilities(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.stack([h.probabilities(feats) for h in self.heads]).mean(0)


def served(head: ProbeHead | HeadMean, feats: torch.Tensor, vote_weight=0.0) -> torch.Tensor:
    """The probabilities the probe surrogate serves from `features` [B, 5C]: the head's (or the
    heads' mean), with `vote_weight` (a float or a 0-d tensor) of the probes' vote shares mixed
    in, as probs + w * (votes - probs): w enters once, so a graph keeps it as one named
    constant."""
    probs = head.probabilities(feats)
    c = head.num_classes
    return probs + vote_weight * (feats[:, 3 * c : 4 * c] - probs)


class ProbeSurrogate(nn.Module):
    """images [B,C,H,W] -> probabilities [B,K]: the surrogate network h, the base f on the K
    fixed probes, and the head (see the module docstring). h ends in logits, as trained."""

    def __init__(
        self,
        surrogate: nn.Module,
        base: nn.Module,
        noise: np.ndarray,
        head: ProbeHead | HeadMean,
        vote_weight: float = 0.0,
        noise_dtype: str = "float32",
    ):
        super().__init__()
        self.surrogate, self.base, self.head = surrogate, base, head
        # buffers become the graph's initializers under these names: the noise in `noise_dtype`
        # (cast to float32 in the graph), the weight as the one constant VOTE_WEIGHT that
        # `with_vote_weight` sets in a graph without exporting it again
        self.register_buffer("noise", torch.as_tensor(noise).to(getattr(torch, noise_dtype)))
        self.register_buffer(VOTE_WEIGHT, torch.tensor(float(vote_weight)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = features_of(self.surrogate, self.base, self.noise, x)
        return served(self.head, feats, getattr(self, VOTE_WEIGHT))


class GraphBase:
    """The base as its exported ONNX graph (parity-checked against the torch network): the K
    probe passes of `probe_features` at about four times torch's rate on a CPU."""

    def __init__(self, graph: Path):
        self.predict = OnnxPredictor(make_session(graph))

    def __call__(self, noisy: torch.Tensor) -> torch.Tensor:
        flat = noisy.cpu().numpy()
        parts = [self.predict(flat[i : i + GRAPH_BATCH]) for i in range(0, len(flat), GRAPH_BATCH)]
        return torch.as_tensor(np.concatenate(parts))


@torch.no_grad()
def probe_features(
    surrogate, base, noise: np.ndarray, images_uint8: np.ndarray, base_graph: Path | None = None
) -> torch.Tensor:
    """`features` of every image (uint8 [N,C,H,W]) under frozen h and f, [N, 5C], on the CPU;
    with `base_graph`, f's probe passes run in onnxruntime on that graph instead of torch."""
    surrogate.eval()
    base.eval()
    on = next(base.parameters()).device
    delta = torch.as_tensor(noise).to(on)
    f = GraphBase(base_graph) if base_graph is not None else base
    out = []
    starts = range(0, len(images_uint8), FEATURE_BATCH)
    for i in tqdm(starts, desc="probe features", mininterval=10, leave=False):
        x = torch.as_tensor(images_uint8[i : i + FEATURE_BATCH]).to(on).float() / 255.0
        out.append(features(surrogate(x).softmax(1).cpu(), probe_logits(f, x, delta).cpu()))
    return torch.cat(out)


def graph_features(graph: Path, images_uint8: np.ndarray, probes: int) -> torch.Tensor:
    """`features` of every image (uint8 [N,C,H,W]) as the features graph `graph` (a
    `ProbeFeatures` exported, in int8 as served) computes them in onnxruntime, [N, 5C]; about
    GRAPH_BATCH network passes per call."""
    predict = OnnxPredictor(make_session(graph))
    step = max(1, GRAPH_BATCH // (probes + 1))
    out = []
    for i in tqdm(range(0, len(images_uint8), step), desc="probe features", mininterval=10):
        out.append(torch.as_tensor(predict(to_float(images_uint8[i : i + step]))))
    return torch.cat(out)


def fit_head(
    feats: torch.Tensor,
    targets_and_n: torch.Tensor,
    *,
    hidden: int,
    epochs: int,
    lr: float,
    seed: int,
    batch_size: int = 256,
    watch: int = 1000,
) -> ProbeHead:
    """The head trained on `feats` [N, 5C] against the frequency targets with N per row
    [N, C+1] (AdamW, one-cycle learning rate). The last `watch` rows stay out of the fit and
    report a held-out loss per epoch; the result is deterministic for a seed."""
    torch.manual_seed(seed)
    head = ProbeHead(targets_and_n.shape[1] - 1, hidden)
    fit, held = slice(0, len(feats) - watch), slice(len(feats) - watch, len(feats))
    x, y = feats[fit], targets_and_n[fit]
    batch_size = min(batch_size, len(x))
    steps = epochs * (len(x) // batch_size)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        head.train()
        order = torch.randperm(len(x), generator=gen)
        for s in range(len(x) // batch_size):
            idx = order[s * batch_size : (s + 1) * batch_size]
            loss = censored_probit_cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        head.eval()
        if watch:
            with torch.no_grad():
                held_loss = censored_probit_cross_entropy(head(feats[held]), targets_and_n[held])
            log.info("probe head epoch %d/%d: held-out loss %.4f", epoch + 1, epochs, held_loss)
    return head.eval()


def fit_heads(
    feats: torch.Tensor, targets_and_n: torch.Tensor, *, count: int, seed: int, **fit
) -> ProbeHead | HeadMean:
    """`count` heads fitted as `fit_head` says, from seeds seed, seed + 1, ...: the one head
    itself when count is 1, else their `HeadMean`."""
    if count < 1:
        raise ValueError(f"the probe head count must be at least 1, not {count}")
    heads = [fit_head(feats, targets_and_n, seed=seed + i, **fit) for i in range(count)]
    return heads[0] if count == 1 else HeadMean(heads).eval()


def head_state(
    head: ProbeHead | HeadMean,
    base: nn.Module,
    base_meta: dict,
    noise_args: dict,
    vote_weight: float = 0.0,
) -> dict:
    """What surrogate.pt stores under "probe_head": enough to rebuild the probe surrogate."""
    heads = list(head.heads) if isinstance(head, HeadMean) else [head]
    return {
        "head": head.state_dict(),
        "hidden": heads[0].mlp[0].out_features,
        "heads": len(heads),  # more than one: a HeadMean
        "base": base.state_dict(),
        "base_meta": base_meta,  # arch, widths, num_classes, mean, std of the base
        "noise": noise_args,  # k, shape, sigma, seed: `probe_noise(**noise)` redraws it
        "vote_weight": vote_weight,
    }


def from_checkpoint(surrogate: nn.Module, stored: dict) -> ProbeSurrogate:
    """The probe surrogate around the network `surrogate` from surrogate.pt's "probe_head"."""
    meta = stored["base_meta"]
    base = models.build(
        meta["arch"], meta["widths"], meta["num_classes"], meta["mean"], meta["std"]
    )
    base.load_state_dict(stored["base"])
    heads = [
        ProbeHead(meta["num_classes"], stored["hidden"]) for _ in range(stored.get("heads", 1))
    ]
    head = heads[0] if len(heads) == 1 else HeadMean(heads)
    head.load_state_dict(stored["head"])
    noise = probe_noise(**stored["noise"])
    weight = stored.get("vote_weight", 0.0)  # heads stored before the weight existed: 0
    dtype = stored["noise"].get("dtype", "float32")
    return ProbeSurrogate(surrogate, base.eval(), noise, head.eval(), weight, dtype).eval()


def graph_vote_weight(model: onnx.ModelProto) -> float | None:
    """The vote weight a probe graph serves with, or None for a graph without the named
    constant (not a probe graph, or exported before it had one)."""
    for init in model.graph.initializer:
        if init.name == VOTE_WEIGHT:
            return float(numpy_helper.to_array(init))
    return None


def with_vote_weight(model: onnx.ModelProto, weight: float) -> onnx.ModelProto:
    """A copy of the probe graph `model` serving with `weight`: only the VOTE_WEIGHT constant
    changes, so every other byte of the computation is the one that was checked and timed."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"vote weight must be in [0, 1], not {weight}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name == VOTE_WEIGHT:
            value = np.asarray(weight, dtype=numpy_helper.to_array(init).dtype)
            init.CopyFrom(numpy_helper.from_array(value, VOTE_WEIGHT))
            return out
    raise ValueError(f"the graph has no {VOTE_WEIGHT!r} constant to set")


def store_noise_half(model: onnx.ModelProto, noise: np.ndarray) -> onnx.ModelProto:
    """`model` with its probe noise stored in float16 and cast to float32 in the graph, half the
    bytes of a probe graph (7 of its 7.5 MB at K = 512). The exporter folds the noise into one
    float32 constant; that constant (found by its values, `noise` [K,C,H,W] with any leading
    1s) becomes a Cast of the float16 copy, so the graph computes exactly what it did, as long
    as every value is a float16 (`probe_noise(..., dtype="float16")`); else ValueError."""
    half = noise.astype(np.float16)
    if not np.array_equal(half.astype(np.float32), noise):
        raise ValueError("the probe noise is not float16-exact: draw it with dtype='float16'")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, init in enumerate(out.graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) != noise.size:
            continue
        value = numpy_helper.to_array(init)
        same = value.shape[-noise.ndim :] == noise.shape and np.array_equal(
            value.ravel(), noise.ravel()
        )
        if not same:
            continue
        name = init.name
        stored = numpy_helper.from_array(half.reshape(value.shape), HALF_NOISE)
        del out.graph.initializer[i]
        out.graph.initializer.append(stored)
        cast = onnx.helper.make_node("Cast", [HALF_NOISE], [name], to=onnx.TensorProto.FLOAT)
        out.graph.node.insert(0, cast)
        return out
    raise ValueError("no float32 constant in the graph holds the probe noise")
