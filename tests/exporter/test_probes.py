"""The probe surrogate: fixed antithetic noise from a seed, the base run on exactly those noisy
copies, a head that starts as the surrogate network itself and learns from the targets, and a
checkpoint that exports to an ONNX graph computing the same in onnxruntime.

Real networks throughout: a base trained for one epoch on the committed tiny CIFAR-10 slice,
its targets drawn by the targets stage, the surrogate imported from an exported graph.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from accsmooth.runtime import OnnxPredictor, make_session
from exporter import data, models, onnx_export, probes, targets, train_base, train_surrogate
from exporter.config import load_config
from exporter.executor import LocalExecutor, using
from exporter.losses import censored_probit_cross_entropy
from tests.exporter.conftest import SMOKE
from tests.exporter.test_onnx_export import TINY_DATA

PROBES = [
    "train_surrogate.probes=4",
    "train_surrogate.head_epochs=3",
    "train_surrogate.head_hidden=16",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, work folder) with data, a base trained one epoch, its graph and its targets."""
    cfg = load_config(SMOKE, TINY_DATA + PROBES)
    work = tmp_path_factory.mktemp("probe-work")
    data.prepare(cfg.data, work)
    train_base.run(cfg, work)
    onnx_export.run(cfg, work, "base")
    with using(LocalExecutor(1)):
        targets.run(cfg, work)
    return cfg, work


def test_probe_noise_is_antithetic_seeded_and_scaled_by_sigma():
    noise = probes.probe_noise(6, (3, 4, 4), 0.5, seed=7)
    assert noise.shape == (6, 3, 4, 4) and noise.dtype == np.float32
    np.testing.assert_array_equal(noise[3:], -noise[:3])
    np.testing.assert_array_equal(noise, probes.probe_noise(6, (3, 4, 4), 0.5, seed=7))
    assert not np.array_equal(noise, probes.probe_noise(6, (3, 4, 4), 0.5, seed=8))
    unit = probes.probe_noise(6, (3, 4, 4), 1.0, seed=7)
    np.testing.assert_allclose(noise, 0.5 * unit, rtol=1e-6)
    odd = probes.probe_noise(5, (3, 4, 4), 1.0, seed=7)  # one unpaired draw, last
    np.testing.assert_array_equal(odd[2:4], -odd[:2])
    with pytest.raises(ValueError, match="at least 1"):
        probes.probe_noise(0, (3, 4, 4), 1.0, seed=7)


def _networks(work):
    base = train_base.network(work)
    surrogate = train_base.network(work)  # any network of the right shape stands in for h
    with torch.no_grad():
        for p in surrogate.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    return surrogate.eval(), base.eval()


def test_an_untrained_head_serves_the_surrogate_network_unchanged(tiny):
    _, work = tiny
    surrogate, base = _networks(work)
    noise = probes.probe_noise(4, (3, 32, 32), 0.25, seed=1)
    model = probes.ProbeSurrogate(surrogate, base, noise, probes.ProbeHead(10, 8)).eval()
    x = torch.as_tensor(data.to_float(data.load(work).eval.images[:6]))
    with torch.no_grad():
        np.testing.assert_allclose(model(x), surrogate(x).softmax(1), atol=1e-6)


def test_the_head_sees_the_base_on_exactly_its_fixed_noisy_copies(tiny):
    _, work = tiny
    surrogate, base = _networks(work)
    noise = probes.probe_noise(4, (3, 32, 32), 0.25, seed=1)
    head = probes.ProbeHead(10, 8)
    torch.nn.init.normal_(head.mlp[-1].weight, std=0.5, generator=torch.Generator().manual_seed(0))
    model = probes.ProbeSurrogate(surrogate, base, noise, head).eval()
    images = data.load(work).eval.images[:5]
    x = torch.as_tensor(data.to_float(images))
    with torch.no_grad():
        by_hand = torch.stack([base(x + torch.as_tensor(n)) for n in noise], dim=1)  # [B,K,C]
        expected = head(probes.features(surrogate(x).softmax(1), by_hand)).softmax(1)
        np.testing.assert_allclose(model(x), expected, atol=1e-6)
        feats = probes.probe_features(surrogate, base, noise, images)
        np.testing.assert_allclose(head(feats).softmax(1), expected, atol=1e-6)
        votes = feats[:, 30:40]  # the vote share of each class over the 4 probes
        np.testing.assert_allclose(
            votes, torch.nn.functional.one_hot(by_hand.argmax(2), 10).float().mean(1)
        )


def test_the_probe_passes_may_run_on_the_base_graph_and_give_the_same_features(tiny):
    cfg, work = tiny
    surrogate, base = _networks(work)
    noise = probes.probe_noise(16, (3, 32, 32), 0.25, seed=1)
    images = data.load(work).train.images
    assert len(images) * len(noise) > probes.GRAPH_BATCH  # more than one onnxruntime call
    in_torch = probes.probe_features(surrogate, base, noise, images)
    graph = train_surrogate._probe_graph(
        cfg.train_surrogate.__class__(probe_runtime="onnxruntime"), work
    )
    assert graph == onnx_export.graph(work, "base")
    on_graph = probes.probe_features(surrogate, base, noise, images, graph)
    assert on_graph.shape == in_torch.shape == (len(images), 50)
    np.testing.assert_allclose(on_graph, in_torch, atol=1e-4)
    assert train_surrogate._probe_graph(cfg.train_surrogate, work) is None  # torch by default
    with pytest.raises(ValueError, match="probe_runtime must be one of"):
        train_surrogate._check_probe_runtime(
            load_config(SMOKE, ["train_surrogate.probe_runtime=tf"])
        )


def test_the_censored_loss_lets_all_votes_targets_go_higher_but_not_lower():
    def loss_and_ce(target, predicted):
        q, p = torch.tensor([target]), torch.log(torch.tensor([predicted]))
        with_n = torch.cat([q, torch.tensor([[100.0]])], dim=1)  # N = 100 draws
        ce = float(-(q * p.log_softmax(1)).sum())
        return float(censored_probit_cross_entropy(p, with_n)), ce

    # all 100 draws named class 0: the target only says p >= 100.5 / 101
    loss, ce = loss_and_ce([1.0, 0.0], [0.99999, 0.00001])
    assert loss == pytest.approx(ce)  # over-predicting costs only the cross-entropy
    loss, ce = loss_and_ce([1.0, 0.0], [0.9, 0.1])
    assert loss > ce + 0.5  # under-predicting costs the probit error
    # 90 of 100: the probit error counts both ways, and not at the smoothed target itself
    loss, ce = loss_and_ce([0.9, 0.1], [0.99999, 0.00001])
    assert loss > ce + 1.0
    loss, ce = loss_and_ce([0.9, 0.1], [90.5 / 101, 10.5 / 101])
    assert loss == pytest.approx(ce, abs=1e-5)


def test_the_stage_imports_a_surrogate_graph_trains_the_head_and_exports_it(tiny, tmp_path):
    cfg, work = tiny
    # a surrogate graph to import (ends in a softmax, names prefixed by its wrapper): the base
    # network exported as a surrogate, as an untrained surrogate would be
    source = tmp_path / "surrogate-graph.onnx"
    onnx_export.export(
        work / "base.pt", "surrogate", source, cfg.export, data.load(work).calib.images
    )
    cfg = load_config(SMOKE, TINY_DATA + PROBES + [f"train_surrogate.from_onnx={source}"])
    ckpt = train_surrogate.run(cfg, work)
    images = data.load(work).eval.images
    x = data.to_float(images)
    with torch.no_grad():
        imported = models.from_checkpoint(ckpt)(torch.as_tensor(x)).softmax(1).numpy()
    np.testing.assert_allclose(imported, OnnxPredictor(make_session(source))(x), atol=1e-5)
    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] == cfg.train_surrogate.epochs and "probe_head" in state
    assert state["probe_head"]["noise"]["k"] == 4
    # a rerun with the same source and settings keeps the checkpoint, head and all
    before = ckpt.read_bytes(), ckpt.stat().st_mtime_ns
    train_surrogate.run(cfg, work)
    assert (ckpt.read_bytes(), ckpt.stat().st_mtime_ns) == before
    path = onnx_export.run(cfg, work, "surrogate")
    sidecar = onnx_export.load_sidecar(work, "surrogate")
    assert sidecar["parity"]["max_abs_diff"] <= 1e-4
    got = OnnxPredictor(make_session(path))(x)
    with torch.no_grad():
        expected = onnx_export.network(ckpt, "surrogate")(torch.as_tensor(data.to_float(images)))
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    # the head learnt something: the served probabilities are no longer the network's
    with torch.no_grad():
        plain = train_base.network(work)(torch.as_tensor(data.to_float(images))).softmax(1)
    assert np.abs(got - plain.numpy()).max() > 1e-3
    # a vote weight set afterwards is stored without training the head again, and served
    head_before = state["probe_head"]["head"]
    mixed_cfg = load_config(
        SMOKE,
        TINY_DATA
        + PROBES
        + [f"train_surrogate.from_onnx={source}", "train_surrogate.vote_weight=0.5"],
    )
    train_surrogate.run(mixed_cfg, work)
    stored = torch.load(ckpt, weights_only=False)["probe_head"]
    assert stored["vote_weight"] == 0.5
    assert all(torch.equal(v, stored["head"][k]) for k, v in head_before.items())
    mixed_graph = OnnxPredictor(make_session(onnx_export.run(mixed_cfg, work, "surrogate")))(x)
    network = onnx_export.network(ckpt, "surrogate")
    xt = torch.as_tensor(x)
    with torch.no_grad():
        logits = probes.probe_logits(network.base, xt, network.noise)
        votes = probes.features(network.surrogate(xt).softmax(1), logits)[:, 30:40].numpy()
        mixed = network(xt).numpy()
    np.testing.assert_allclose(mixed, 0.5 * votes + 0.5 * expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(mixed_graph, mixed, atol=1e-4)
    np.testing.assert_allclose(mixed_graph.sum(1), 1.0, atol=1e-5)
    # the weight is one named constant of the graph: set there, the graph serves the new mix
    graph = onnx.load(onnx_export.graph(work, "surrogate"))
    assert probes.graph_vote_weight(graph) == 0.5
    for weight, want in ((1.0, votes), (0.0, expected.numpy())):
        changed = probes.with_vote_weight(graph, weight)
        assert probes.graph_vote_weight(changed) == weight
        session = ort.InferenceSession(changed.SerializeToString())
        np.testing.assert_allclose(session.run(None, {"images": x})[0], want, atol=1e-4)
    assert probes.graph_vote_weight(graph) == 0.5  # a copy: the graph itself unchanged
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        probes.with_vote_weight(graph, -0.1)
    with pytest.raises(ValueError, match="no 'vote_weight'"):
        probes.with_vote_weight(onnx.load(source), 0.5)
    assert probes.graph_vote_weight(onnx.load(source)) is None
    bad = load_config(SMOKE, TINY_DATA + PROBES + ["train_surrogate.vote_weight=1.5"])
    with pytest.raises(ValueError, match="vote_weight"):
        train_surrogate.add_probe_head(bad, work, ckpt)


def _work_without_a_surrogate(tiny, tmp_path):
    """(a copy of the tiny work folder with no surrogate or features, a surrogate graph to
    import into it)."""
    cfg, shared = tiny
    work = tmp_path / "work"
    shutil.copytree(shared, work)
    for name in (train_surrogate.CHECKPOINT, train_surrogate.PROBE_FEATURES):
        (work / name).unlink(missing_ok=True)
    source = tmp_path / "surrogate-graph.onnx"
    onnx_export.export(
        work / "base.pt", "surrogate", source, cfg.export, data.load(work).calib.images
    )
    return work, source


def test_the_heads_features_are_kept_and_reused_only_for_the_same_networks_and_probes(
    tiny, tmp_path
):
    work, source = _work_without_a_surrogate(tiny, tmp_path)
    imported = PROBES + [f"train_surrogate.from_onnx={source}"]
    ckpt = train_surrogate.run(load_config(SMOKE, TINY_DATA + imported), work)
    cache = work / train_surrogate.PROBE_FEATURES
    kept = torch.load(cache, weights_only=False)
    stored = torch.load(ckpt, weights_only=False)["probe_head"]
    images = targets.labelled_images(work, data.load(work).train.images)
    noise = probes.probe_noise(**stored["noise"])
    surrogate, base = models.from_checkpoint(ckpt), train_base.network(work)
    expected = probes.probe_features(surrogate, base, noise, images)
    torch.testing.assert_close(kept["features"], expected)
    # another head over the same probes: trained again, on the kept features
    before = cache.stat().st_mtime_ns
    longer = load_config(SMOKE, TINY_DATA + imported + ["train_surrogate.head_epochs=5"])
    train_surrogate.run(longer, work)
    assert cache.stat().st_mtime_ns == before
    again = torch.load(ckpt, weights_only=False)["probe_head"]
    assert not all(torch.equal(v, again["head"][k]) for k, v in stored["head"].items())
    # other probes: the features are computed again, for them
    reseeded = imported + ["train_surrogate.probe_seed=99"]
    train_surrogate.run(load_config(SMOKE, TINY_DATA + reseeded), work)
    now = torch.load(cache, weights_only=False)
    assert now["key"]["noise"]["seed"] == 99
    assert not torch.equal(now["features"], kept["features"])


def test_several_heads_serve_the_mean_of_their_probabilities_in_torch_and_in_the_graph(
    tiny, tmp_path
):
    cfg, shared = tiny
    work = tmp_path / "work"
    shutil.copytree(shared, work)
    (work / train_surrogate.CHECKPOINT).unlink(missing_ok=True)
    source = tmp_path / "surrogate-graph.onnx"
    onnx_export.export(
        work / "base.pt", "surrogate", source, cfg.export, data.load(work).calib.images
    )
    settings = [f"train_surrogate.from_onnx={source}", "train_surrogate.vote_weight=0.5"]
    three = load_config(SMOKE, TINY_DATA + PROBES + settings + ["train_surrogate.head_count=3"])
    ckpt = train_surrogate.run(three, work)
    stored = torch.load(ckpt, weights_only=False)["probe_head"]
    assert stored["heads"] == 3 and stored["settings"]["heads"] == 3
    network = onnx_export.network(ckpt, "surrogate")
    assert isinstance(network.head, probes.HeadMean) and len(network.head.heads) == 3
    x = torch.as_tensor(data.to_float(data.load(work).eval.images))
    with torch.no_grad():
        feats = probes.features(
            network.surrogate(x).softmax(1), probes.probe_logits(network.base, x, network.noise)
        )
        each = [h(feats).softmax(1) for h in network.head.heads]
        served = network(x).numpy()
    # three heads from seeds seed, seed + 1, seed + 2: each its own, and the first is the one
    # head the stage trains with head_count = 1
    assert all(not torch.allclose(a, b) for a, b in zip(each, each[1:], strict=False))
    mean = torch.stack(each).mean(0)
    np.testing.assert_allclose(served, (mean + 0.5 * (feats[:, 30:40] - mean)).numpy(), atol=1e-6)
    one = load_config(SMOKE, TINY_DATA + PROBES + settings)
    single = onnx_export.network(train_surrogate.run(one, work), "surrogate")
    assert isinstance(single.head, probes.ProbeHead)
    for a, b in zip(single.head.parameters(), network.head.heads[0].parameters(), strict=True):
        assert torch.equal(a, b)
    # the graph serves what the torch network does
    train_surrogate.run(three, work)
    graph = OnnxPredictor(make_session(onnx_export.run(three, work, "surrogate")))
    np.testing.assert_allclose(graph(x.numpy()), served, atol=1e-4)
    with pytest.raises(ValueError, match="at least 1"):
        probes.fit_heads(feats, feats, count=0, seed=0, hidden=4, epochs=1, lr=1e-3)


def test_fitting_the_head_lowers_its_loss_on_the_targets(tiny):
    _, work = tiny
    surrogate, base = _networks(work)
    images = data.load(work).train.images
    noise = probes.probe_noise(4, (3, 32, 32), 0.25, seed=1)
    feats = probes.probe_features(surrogate, base, noise, images)
    _, fit_to = train_surrogate.fit_to_targets(targets.load(work), "ce_probit_censored")
    untrained = probes.ProbeHead(10, 16)
    head = probes.fit_head(
        feats, fit_to, hidden=16, epochs=20, lr=1e-2, seed=0, batch_size=16, watch=0
    )
    with torch.no_grad():
        before = float(censored_probit_cross_entropy(untrained(feats), fit_to))
        after = float(censored_probit_cross_entropy(head(feats), fit_to))
    assert after < 0.8 * before
    again = probes.fit_head(
        feats, fit_to, hidden=16, epochs=20, lr=1e-2, seed=0, batch_size=16, watch=0
    )
    for a, b in zip(head.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)  # deterministic for a seed


def test_float16_noise_is_what_the_head_trains_on_and_what_the_graph_stores(tiny, tmp_path):
    full = probes.probe_noise(6, (3, 4, 4), 0.5, seed=7)
    half = probes.probe_noise(6, (3, 4, 4), 0.5, seed=7, dtype="float16")
    np.testing.assert_array_equal(half, half.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(half, full, rtol=1e-3, atol=1e-7)
    np.testing.assert_array_equal(half[3:], -half[:3])  # still antithetic
    assert not np.array_equal(half, full)
    with pytest.raises(ValueError, match="dtype"):
        probes.probe_noise(6, (3, 4, 4), 0.5, seed=7, dtype="int8")
    # the stage: the head's noise drawn in float16, the graph holding it so, in int8 as served
    cfg, work = tiny
    source = tmp_path / "surrogate-graph.onnx"
    onnx_export.export(
        work / "base.pt", "surrogate", source, cfg.export, data.load(work).calib.images
    )
    settings = [f"train_surrogate.from_onnx={source}", "train_surrogate.vote_weight=0.25"]
    settings += ["train_surrogate.probe_noise_dtype=float16", "export.int8_surrogate=true"]
    # the one-epoch base's logits are all but flat (top two within 0.02), so int8 moves its
    # votes wholesale: here quantization is checked to keep the float16 noise, and its accuracy
    # where test_onnx_export checks it
    settings += ["export.int8_max_disagreement=1.0"]
    cfg16 = load_config(SMOKE, TINY_DATA + PROBES + settings)
    ckpt = train_surrogate.run(cfg16, work)
    assert torch.load(ckpt, weights_only=False)["probe_head"]["noise"]["dtype"] == "float16"
    network = onnx_export.network(ckpt, "surrogate")
    assert network.noise.dtype == torch.float16
    np.testing.assert_array_equal(
        network.noise.float().numpy(),
        probes.probe_noise(4, (3, 32, 32), 0.25, cfg16.train_surrogate.probe_seed, "float16"),
    )
    path = onnx_export.run(cfg16, work, "surrogate")
    graph = onnx.load(path)
    stored = {i.name: i for i in graph.graph.initializer}
    assert stored[probes.HALF_NOISE].data_type == onnx.TensorProto.FLOAT16
    noise_size = 4 * 3 * 32 * 32
    assert (
        not [  # no float32 copy of the noise left beside it
            i.name
            for i in graph.graph.initializer
            if i.data_type == onnx.TensorProto.FLOAT and int(np.prod(i.dims)) == noise_size
        ]
    )
    assert probes.graph_vote_weight(graph) == 0.25
    assert onnx_export.load_sidecar(work, "surrogate")["int8"]["images"] > 0
    x = data.to_float(data.load(work).eval.images)
    got = OnnxPredictor(make_session(path))(x)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    # a float32 graph would not do: its noise is not float16-exact
    model = probes.ProbeSurrogate(network.surrogate, network.base, full, network.head).eval()
    with pytest.raises(ValueError, match="float16"):
        probes.store_noise_half(onnx.load(path), model.noise.numpy())


def test_int8_heads_learn_the_features_the_served_int8_graph_computes(tiny, tmp_path):
    work, source = _work_without_a_surrogate(tiny, tmp_path)
    settings = PROBES + [f"train_surrogate.from_onnx={source}", "train_surrogate.vote_weight=0.5"]
    settings += ["train_surrogate.probe_runtime=int8", "train_surrogate.probe_noise_dtype=float16"]
    with pytest.raises(ValueError, match="needs export.int8_surrogate = true"):
        train_surrogate.run(load_config(SMOKE, TINY_DATA + settings), work)
    # int8 moves the one-epoch base's all but flat votes wholesale (see the float16 test)
    settings += ["export.int8_surrogate=true", "export.int8_max_disagreement=1.0"]
    cfg8 = load_config(SMOKE, TINY_DATA + settings)
    ckpt = train_surrogate.run(cfg8, work)
    kept = torch.load(work / train_surrogate.PROBE_FEATURES, weights_only=False)
    assert kept["key"]["int8"]["images"]
    stored = torch.load(ckpt, weights_only=False)["probe_head"]
    assert stored["settings"]["runtime"] == "int8"
    assert not list(work.glob("*.int8.onnx"))  # the features graph is not left behind
    # the served int8 graph computes, on the training images, the head over exactly the kept
    # features, and not over the float32 ones
    images = targets.labelled_images(work, data.load(work).train.images)[:16]
    served = OnnxPredictor(make_session(onnx_export.run(cfg8, work, "surrogate")))
    got = served(data.to_float(images))
    network = onnx_export.network(ckpt, "surrogate")
    with torch.no_grad():
        expected = probes.served(network.head, kept["features"][:16], 0.5).numpy()
        noise = network.noise.float().numpy()
        float32 = probes.probe_features(network.surrogate, network.base, noise, images)
        moved = probes.served(network.head, float32, 0.5).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - moved).max() > 1e-3
