"""Config loading: presets, typed overrides, and clear errors for unknown names."""

import pytest

from exporter.config import load_config
from tests.exporter.conftest import ROOT


def test_preset_loads_with_its_values():
    cfg = load_config(ROOT / "exporter/configs/cifar10-cpu.toml")
    assert cfg.bundle.sigma == 0.25 and cfg.bundle.n == 10_000 and cfg.data.eval_every == 18
    assert cfg.train_base.widths == (16, 32, 64)


def test_overrides_are_parsed_with_the_field_type():
    cfg = load_config(
        None,
        [
            "train_base.epochs=3",
            "bundle.sigma=0.5",
            "train_base.widths=8,16,32",
            "data.download=false",
        ],
    )
    assert cfg.train_base.epochs == 3 and cfg.bundle.sigma == 0.5
    assert cfg.train_base.widths == (8, 16, 32) and cfg.data.download is False


@pytest.mark.parametrize(
    "override, message",
    [
        ("train_base.epoch=3", "unknown field"),
        ("trainbase.epochs=3", "unknown config section"),
        ("epochs=3", "section.field=value"),
        ("data.download=maybe", "true/false"),
    ],
)
def test_bad_overrides_are_rejected_with_a_message(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_config_is_frozen():
    cfg = load_config(None)
    with pytest.raises(AttributeError):
        cfg.bundle.sigma = 1.0


@pytest.mark.parametrize(
    "preset", sorted((ROOT / "exporter/configs").glob("*.toml")), ids=lambda p: p.stem
)
def test_every_preset_loads_and_builds_its_network(preset):
    from exporter.models import build

    cfg = load_config(preset)
    net = build(cfg.train_base.arch, cfg.train_base.widths, 10, [0.5] * 3, [0.25] * 3)
    assert sum(p.numel() for p in net.parameters()) > 0
    assert 0 < cfg.bundle.alpha < 1 and cfg.bundle.n > cfg.bundle.n0 > 0
