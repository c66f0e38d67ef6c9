"""The GPU path of the exporter, run here on torch's CPU device: `exporter.torch_work` counts what
`exporter.chunk_work` counts (same network, same noise level, another random stream), and
`TorchExecutor` runs the checkpoint behind the graph the stages hand it.

A tiny random CNN (exported to ONNX with the exporter's own converter) keeps these fast: its
classes change under noise (top frequencies 0.76-0.97), so a wrong sampler shows.
"""

import numpy as np
import pytest
import torch

from accsmooth.runtime import OnnxPredictor, make_session
from exporter import chunk_work, models, onnx_export, torch_work
from exporter.certify_images import certify_all
from exporter.config import BundleConfig, ExportConfig
from exporter.executor import TorchExecutor, using

SIGMA = 0.25


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """(base.onnx, base.pt, images uint8 [6,3,32,32]) of a random 4-8-8 CNN."""
    folder = tmp_path_factory.mktemp("tiny-base")
    torch.manual_seed(0)
    net = models.build("cnn", (4, 8, 8), 10, [0.5] * 3, [0.25] * 3).eval()
    last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # large logit gaps: noise moves the class, not a constant bias
        last.weight.mul_(200.0)
        last.bias.zero_()
    checkpoint = folder / "base.pt"
    torch.save(
        {"model": net.state_dict(), "arch": "cnn", "widths": [4, 8, 8], "num_classes": 10}
        | {"mean": [0.5] * 3, "std": [0.25] * 3},
        checkpoint,
    )
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    graph = folder / "base.onnx"
    onnx_export.export(checkpoint, "base", graph, ExportConfig(parity_images=6), images)
    return graph, checkpoint, images


def _label(work, predict, images, index=0, num_samples=2000, extra=0, batch_size=512):
    return work(
        predict,
        images,
        index=index,
        seed=7,
        sigma=SIGMA,
        num_classes=10,
        num_samples=num_samples,
        extra_samples=extra,
        confident_fraction=0.5,
        batch_size=batch_size,
    )


def test_the_checkpoint_names_the_class_the_graph_names_on_every_noisy_image(tiny_base):
    graph, checkpoint, images = tiny_base
    x = np.repeat(images.astype(np.float32) / 255.0, 500, axis=0)
    x += np.random.default_rng(1).normal(0, SIGMA, x.shape).astype(np.float32)
    torch_work.exact_float32()
    with torch.no_grad():
        from_torch = models.from_checkpoint(checkpoint)(torch.as_tensor(x)).argmax(1).numpy()
    from_onnx = OnnxPredictor(make_session(graph))(x).argmax(1)
    assert np.array_equal(from_torch, from_onnx)


def test_torch_counts_estimate_the_frequencies_the_numpy_sampler_estimates(tiny_base):
    graph, checkpoint, images = tiny_base
    net = models.from_checkpoint(checkpoint)
    on_torch, drawn = _label(torch_work.label_chunk, net, images)
    on_numpy, _ = _label(chunk_work.label_chunk, OnnxPredictor(make_session(graph)), images)
    assert drawn == len(images) * 2000
    assert (on_torch.sum(1) == 2000).all() and (on_numpy.sum(1) == 2000).all()
    p, q = on_torch / 2000, on_numpy / 2000
    assert p.max(1).min() > 0.05 and p.max(1).max() < 0.999  # frequencies a wrong sampler moves
    # two independent estimates of one frequency: their difference has sd sqrt(2 f (1 - f) / N)
    f = (p + q) / 2
    sd = np.sqrt(2 * f * (1 - f) / 2000) + 1e-3
    assert (np.abs(p - q) <= 5 * sd).all()


def test_a_chunk_stream_depends_on_its_seed_and_index_only(tiny_base):
    _, checkpoint, images = tiny_base
    net = models.from_checkpoint(checkpoint)
    first, _ = _label(torch_work.label_chunk, net, images, index=3, num_samples=300)
    again, _ = _label(torch_work.label_chunk, net, images, index=3, num_samples=300, batch_size=97)
    other, _ = _label(torch_work.label_chunk, net, images, index=4, num_samples=300)
    assert np.array_equal(first, again)  # the batch size does not change the draws
    assert not np.array_equal(first, other)


def test_confident_images_get_the_extra_draws(tiny_base):
    _, checkpoint, images = tiny_base
    net = models.from_checkpoint(checkpoint)
    counts, drawn = _label(torch_work.label_chunk, net, images, num_samples=200, extra=300)
    confident = counts.sum(1) == 500
    assert set(counts.sum(1)) <= {200, 500} and confident.any()
    assert drawn == len(images) * 200 + confident.sum() * 300


def test_certify_chunk_draws_n0_then_n_for_every_image(tiny_base):
    _, checkpoint, images = tiny_base
    result = torch_work.certify_chunk(
        models.from_checkpoint(checkpoint),
        images,
        first=0,
        seed=1,
        sigma=SIGMA,
        n0=50,
        n=400,
        alpha=0.001,
        batch_size=256,
    )
    assert (result["counts0"].sum(1) == 50).all() and (result["counts"].sum(1) == 400).all()
    assert result["seconds"].shape == (len(images),) and (result["seconds"] > 0).all()


def test_the_torch_executor_certifies_with_the_graphs_checkpoint_and_says_so(tiny_base, tmp_path):
    graph, _, images = tiny_base
    bundle = BundleConfig(sigma=SIGMA, n0=20, n=200, alpha=0.01)
    with TorchExecutor("cpu", batch_size=1000) as ex, using(ex):
        mc = certify_all(graph, images, bundle, batch_size=64, seed=0, out_dir=tmp_path, desc="mc")
    assert (mc.counts.sum(1) == 200).all() and (mc.counts0.sum(1) == 20).all()
    with np.load(tmp_path / "chunk_00000.npz") as chunk:
        assert str(chunk["sampler"]) == "torch"


def test_the_torch_executor_needs_the_checkpoint_beside_the_graph(tiny_base, tmp_path):
    graph, _, images = tiny_base
    lonely = tmp_path / "base.onnx"
    lonely.write_bytes(graph.read_bytes())
    with TorchExecutor("cpu") as ex, pytest.raises(FileNotFoundError, match="base.pt"):
        list(ex.map(chunk_work.certify_chunk, lonely, [(0, {"images_uint8": images})]))


def test_the_device_option_picks_the_torch_executor_for_a_gpu_and_the_pool_for_the_cpu():
    import argparse

    from exporter import __main__ as cli
    from exporter.executor import LocalExecutor
    from exporter.training import device, resolve_device, using_device

    args = argparse.Namespace(ray=False, ray_address=None, workers=1)
    assert isinstance(cli.make_executor(args, "cpu"), LocalExecutor)
    on_gpu = cli.make_executor(args, "cuda")  # built without touching a GPU: only its runs do
    assert isinstance(on_gpu, TorchExecutor) and on_gpu.device.type == "cuda"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cuda:1") == "cuda:1"
    with using_device("cpu"):
        assert device().type == "cpu"


def test_chunks_written_before_samplers_were_recorded_count_as_numpy(tmp_path):
    from exporter.certify_images import samplers

    np.savez(tmp_path / "chunk_00000.npz", counts=np.zeros((1, 10)))
    np.savez(tmp_path / "chunk_00001.npz", counts=np.zeros((1, 10)), sampler="torch")
    np.savez(tmp_path / "chunk_00002.npz", counts=np.zeros((1, 10)), sampler="torch")
    assert samplers(tmp_path) == {"numpy": 1, "torch": 2}


def test_online_targets_are_the_bases_frequencies_with_fresh_draws_every_epoch(tiny_base, tmp_path):
    import dataclasses
    import shutil

    from exporter import train_surrogate
    from exporter.config import Config

    _, checkpoint, images = tiny_base
    shutil.copy(checkpoint, tmp_path / "base.pt")
    cfg = Config()
    cfg = dataclasses.replace(
        cfg,
        bundle=dataclasses.replace(cfg.bundle, sigma=SIGMA),
        train_surrogate=dataclasses.replace(
            cfg.train_surrogate, online_samples=400, loss="ce_probit"
        ),
    )
    label = train_surrogate.online_labeller(cfg, tmp_path)
    x = torch.as_tensor(images).float() / 255.0

    def stream(epoch):
        return torch_work.generator(torch.device("cpu"), 0, epoch)

    first, again, later = label(x, stream(0)), label(x, stream(0)), label(x, stream(1))
    one_stream = stream(0)
    assert not torch.equal(label(x, one_stream), label(x, one_stream))  # batches draw anew
    assert first.shape == (len(images), 11) and (first[:, -1] == 400).all()  # frequencies, N
    assert torch.allclose(first[:, :-1].sum(1), torch.ones(len(images)))
    assert torch.equal(first, again) and not torch.equal(first, later)  # fresh draws per epoch
    # the same frequencies as the Monte-Carlo chunks estimate (another stream)
    counts, _ = _label(torch_work.label_chunk, models.from_checkpoint(checkpoint), images)
    assert np.abs(first[:, :-1].numpy() - counts / 2000).max() < 0.1


def test_gpu_check_reports_agreement_and_rates_on_a_work_folder(smoke_run, capsys):
    from exporter import gpu_check

    _, work, _ = smoke_run
    argv = ["--work", str(work), "--device", "cpu", "--images", "5", "--draws", "20"]
    gpu_check.main([*argv, "--batch", "64"])
    out = capsys.readouterr().out
    assert "same class as onnxruntime: 100 of 100 noisy images (1.000000)" in out
    assert "cpu: " in out and "noisy samples/s at batch 64" in out
