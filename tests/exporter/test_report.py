"""report.md's reference points and reproduce line, from the committed presets."""

import json

import pytest
import tomllib
from scipy.stats import binomtest

from exporter.report import (
    CONFIGS,
    REFERENCE,
    REFERENCE_NAME,
    _reference_row,
    preset_for,
    rate_interval,
)

BUNDLES = sorted(p.parent for p in (CONFIGS.parents[1] / "models").glob("cifar10-*/manifest.json"))


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_each_committed_bundle_names_the_preset_of_its_version(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    preset = tomllib.loads((CONFIGS.parents[1] / preset_for(bundle.name)).read_text())["bundle"]
    assert (preset["name"], preset["version"]) == (bundle.name, manifest["version"])


def test_experiment_presets_sharing_a_bundle_name_are_not_named():
    assert preset_for("cifar10-sigma0.25") == "exporter/configs/cifar10-cpu.toml"
    assert preset_for("no-such-bundle") == "<preset>"


def test_reference_row_prints_cohen_figures_only_where_they_exist():
    (row,) = _reference_row(1.0, ["0.0", "1.5", "2.0"])
    assert row == f"| {REFERENCE_NAME} | 47.2% | 14.0% | - |"
    assert _reference_row(0.25, ["0.0"]) == []  # no reference printed for this sigma
    assert set(REFERENCE) == {0.5, 1.0}


def test_the_guarantee_is_called_approximate_exactly_when_the_rule_was_chosen_on_its_own_images(
    tmp_path,
):
    from accsmooth.bundle import Calibration
    from exporter.report import calibration_choice, guarantee

    one = Calibration.model_validate(
        {"epsilon": 0.01, "shift": 0.5, "set_size": 2000, "method": "split-conformal"}
    )
    assert guarantee(one, 1).endswith("over-claims the Monte-Carlo one) <= epsilon.")
    assert "approximate" in guarantee(one, 4) and "one shift was chosen among 4" in guarantee(
        one, 4
    )
    for calibrate, expected in (
        ({"bins": [1, 2, 3, 4], "selection_fraction": 0.0}, 4),  # cross-fitted on the fit images
        ({"bins": [1, 2], "top_bins": [0.05, 0.1], "selection_fraction": 0.0}, 6),  # each K thrice
        ({"bins": [1, 2], "selection_fraction": 0.3}, 1),  # chosen on a separate selection part
        ({"bins": [1], "selection_fraction": 0.0}, 1),  # fixed in advance
    ):
        manifest = {"exporter": {"config": {"calibrate": calibrate}}}
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
        assert calibration_choice(tmp_path) == expected
    assert calibration_choice(BUNDLES[0]) == 4  # the default bundle: bins 1-4, cross-fitted


@pytest.mark.parametrize("count, images", [(26, 2000), (0, 200), (4, 500), (500, 500)])
def test_an_over_estimation_rate_comes_with_its_count_and_exact_interval(count, images):
    k, low, high = rate_interval(count / images, images)
    exact = binomtest(count, images).proportion_ci(0.95, method="exact")
    assert k == count
    assert low == pytest.approx(exact.low, abs=1e-9) and high == pytest.approx(exact.high, abs=1e-9)
