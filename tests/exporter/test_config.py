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


def test_the_hybrid_section_defaults_to_the_servers_settings():
    from server.settings import Settings

    hybrid, server = load_config(None).hybrid, Settings.model_fields
    assert hybrid.margin == server["hybrid_margin"].default == 0.05
    assert hybrid.budget_ms == server["hybrid_budget_ms"].default == 100.0
    assert hybrid.radii == (0.0, 0.25, 0.5, 0.75, 1.0) and hybrid.seed == 0
    assert hybrid.batch_size == 256


def test_the_hybrid_section_is_read_from_the_preset_and_the_cli_flags_override_it(tmp_path):
    from exporter.hybrid import parse_args

    preset = tmp_path / "preset.toml"
    preset.write_text("[hybrid]\nmargin = 0.1\nbudget_ms = 250\nradii = [0.0, 0.5]\n")
    cfg = load_config(preset, ["hybrid.seed=3"])
    assert (cfg.hybrid.margin, cfg.hybrid.budget_ms) == (0.1, 250.0)
    assert cfg.hybrid.radii == (0.0, 0.5) and cfg.hybrid.seed == 3
    argv = ["models/x", "--work", "work/x", "--config", str(preset)]
    _, _, from_preset = parse_args(argv)
    assert from_preset == load_config(preset).hybrid
    _, _, flagged = parse_args([*argv, "--budget-ms", "40"])
    assert flagged.budget_ms == 40.0 and flagged.margin == 0.1  # the flag wins, the rest stays
    _, _, defaults = parse_args(["models/x", "--work", "work/x", "--margin", "0.2"])
    assert defaults.margin == 0.2 and defaults.budget_ms == 100.0
