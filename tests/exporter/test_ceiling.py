"""The fidelity ceiling: a synthetic world drawn from Monte-Carlo counts, where a surrogate that
knows the smoothed frequencies serves close to Monte-Carlo and a few votes do not."""

import json

import numpy as np

from exporter import ceiling
from exporter.config import CalibrateConfig
from exporter.fidelity import Evidence, Protocol

P = Protocol(10_000, 0.001, 0.25)
RADII = (0.0, 0.25, 0.5)


def _set(rng, m, n=10_000):
    """Images whose top class is the label; its frequency spread over (0.3, 1], the rest shared
    unevenly by the other three classes."""
    top = np.where(rng.random(m) < 0.3, 1.0, rng.uniform(0.3, 1.0, m))
    rest = rng.dirichlet(np.ones(3), m) * (1 - top)[:, None]
    p = np.concatenate([top[:, None], rest], axis=1)
    counts = rng.multinomial(n, p)
    return Evidence(np.zeros(m, dtype=int), rng.multinomial(100, p), counts, p)


def _rows(votes):
    rng = np.random.default_rng(7)
    sets = {"calibration": _set(rng, 3000), "holdout": _set(rng, 3000)}
    calibrate = CalibrateConfig(bins=(1, 2), top_bins=(0.1,))
    return ceiling.ceiling(sets, P, 100, calibrate, RADII, votes=votes, seed=1)


def test_vote_shares_are_k_draws_of_the_frequencies():
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    shares = ceiling.vote_shares(p, 8, np.random.default_rng(0))
    assert np.allclose(shares.sum(1), 1.0)
    assert np.allclose(shares * 8, np.rint(shares * 8))  # a lattice of 1/K
    assert shares[0, 2] == 0 and shares[1, 0] == 1  # never a class the base never names


def test_exact_frequencies_serve_close_to_monte_carlo_and_few_votes_do_not():
    rows = _rows(votes=(8,))
    assert [r["votes"] for r in rows] == [8, None]
    gaps = []
    for row in rows:
        t = row["sets"]["holdout"]
        ca = t["certified_accuracy"]
        served = ca["surrogate_calibrated"]
        gaps.append([ca["monte_carlo"][r] - served[r] for r in ca["monte_carlo"]])
        assert t["versus_monte_carlo"]["surrogate_calibrated"]["overestimation_rate"] <= 0.02
    few, exact = np.array(gaps)
    assert np.all(exact <= 0.02)  # only CERTIFY's own sampling noise is left to calibrate away
    assert np.all(few >= exact) and few.max() >= 0.05
    assert rows[1]["sets"]["holdout"]["top1_agreement"] >= 0.99


def test_the_command_reads_a_bundle_and_writes_its_rows(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert ceiling.main(["models/cifar10-sigma0.25", "--votes", "32", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["votes"] for r in rows] == [32, None]
    assert set(rows[0]["sets"]) == {"evaluation", "holdout"}
    printed = capsys.readouterr().out
    assert "| 32 votes |" in printed and "| exact frequencies |" in printed


def test_the_command_refuses_a_folder_without_a_bundle(tmp_path, capsys):
    assert ceiling.main([str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err
