"""exporter.ensemble: one graph computing the mean of several surrogates' probabilities."""

import numpy as np
import onnx

from accsmooth.runtime import OnnxPredictor, make_session
from exporter import ensemble
from server.placeholder import intensity_weights, linear_graph

SHAPE = (3, 8, 8)


def _surrogate(path, c):
    onnx.save(linear_graph(*intensity_weights(SHAPE, 3, c=c), SHAPE, softmax=True), path)
    return path


def test_the_averaged_graph_outputs_the_mean_of_its_members(tmp_path):
    members = [_surrogate(tmp_path / "a.onnx", 20.0), _surrogate(tmp_path / "b.onnx", 5.0)]
    out = ensemble.average(members, tmp_path / "mean.onnx")
    x = np.random.default_rng(0).random((16, *SHAPE), dtype=np.float32)
    a, b = (OnnxPredictor(make_session(m))(x) for m in members)
    got = OnnxPredictor(make_session(out))(x)
    assert not np.allclose(a, b)  # two different members
    assert np.allclose(got, (a + b) / 2, atol=1e-6) and np.allclose(got.sum(1), 1.0, atol=1e-5)
    graph = onnx.load(out).graph
    assert [i.name for i in graph.input] == ["images"]
    assert [o.name for o in graph.output] == ["probabilities"]
    assert ensemble.parity(members, out, x) < 1e-6


def test_the_command_checks_parity_and_exits_zero(tmp_path):
    members = [_surrogate(tmp_path / "a.onnx", 20.0), _surrogate(tmp_path / "b.onnx", 5.0)]
    argv = [str(tmp_path / "mean.onnx"), *map(str, members)]
    assert ensemble.main(argv) == 0
