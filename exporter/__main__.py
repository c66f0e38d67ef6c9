"""Command line: `python -m exporter run --config exporter/configs/smoke.toml --out models/x`.

`python -m exporter reuse-monte-carlo --config C --from models/b` takes bundle b's Monte-Carlo
evidence as finished chunks instead of sampling it again (exporter/reuse.py).
Stages, in order: data, train-base, export-base (base.onnx), targets, train-surrogate,
export-surrogate (surrogate.onnx), calibrate, bundle (the bundle folder), evaluate, hybrid.
Options: `--stage NAME` (repeatable) runs only those stages; `--data-dir DIR` points at an
ImageFolder root (train/, test/); `--work DIR` holds intermediate artifacts (default
work/<bundle name>); `--set section.field=value` (repeatable) overrides the preset.
Monte-Carlo (targets, calibrate, evaluate) runs on every core of this machine; `--workers N`
caps the workers (1: in this process), `--ray` runs it on a local Ray and `--ray-address ADDR`
on a Ray cluster (`pip install -e '.[cluster]'`; see exporter/executor.py). `--device cuda`
runs training and Monte-Carlo on a GPU through PyTorch (`auto`, the default: where torch sees
one; the noise is then drawn on the GPU, see exporter/torch_work.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from exporter.config import load_config
from exporter.executor import Executor, LocalExecutor, RayExecutor, using

# The pipeline (and torch) is imported in main(): a spawned Monte-Carlo worker imports this
# module as its __main__ and needs none of it.
STAGE_NAMES = (
    "data",
    "train-base",
    "export-base",
    "targets",
    "train-surrogate",
    "export-surrogate",
    "calibrate",
    "bundle",
    "evaluate",
    "hybrid",
)


def make_executor(args: argparse.Namespace, device: str) -> Executor:
    """The executor the options name: Ray, torch on a GPU device, or local (default)."""
    if args.ray or args.ray_address:
        return RayExecutor(args.ray_address, args.workers)
    if device != "cpu":
        from exporter.executor import TorchExecutor

        return TorchExecutor(device)
    return LocalExecutor(args.workers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exporter",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the pipeline (or some stages) into a bundle")
    p.add_argument("--config", required=True, help="TOML preset, e.g. exporter/configs/smoke.toml")
    p.add_argument("--out", required=True, type=Path, help="bundle folder, e.g. models/<name>")
    p.add_argument("--stage", action="append", choices=STAGE_NAMES, help="run only this stage")
    p.add_argument("--data-dir", help="ImageFolder root with train/ and test/")
    p.add_argument("--work", type=Path, help="work folder (default work/<bundle name>)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config field",
    )
    p.add_argument("--workers", type=int, help="Monte-Carlo workers (default: every core)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--ray", action="store_true", help="run the Monte-Carlo on a local Ray")
    where.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster ('auto', ...)")
    p.add_argument(
        "--device",
        default="auto",
        help="torch device for training and Monte-Carlo: cpu, cuda, cuda:N or auto (a GPU "
        "where torch sees one, else cpu)",
    )
    r = sub.add_parser(
        "reuse-monte-carlo",
        help="take a committed bundle's Monte-Carlo evidence as the calibrate and evaluate "
        "stages' finished chunks (same base graph, protocol, images and seeds; exporter/reuse.py)",
    )
    r.add_argument("--config", required=True, help="TOML preset of the bundle being made")
    r.add_argument("--from", dest="source", required=True, type=Path, help="bundle folder")
    r.add_argument("--work", type=Path, help="work folder (default work/<bundle name>)")
    r.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args(argv)
    if args.command == "reuse-monte-carlo":
        return reuse_monte_carlo(args)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides = list(args.set) + ([f"data.root={args.data_dir}"] if args.data_dir else [])
    from exporter.data import DatasetError
    from exporter.pipeline import STAGES, run
    from exporter.training import resolve_device, using_device

    assert tuple(STAGES) == STAGE_NAMES, "exporter/__main__.py lists the stages of the pipeline"
    try:
        cfg = load_config(args.config, overrides)
        work = args.work or Path("work") / cfg.bundle.name
        device = resolve_device(args.device)
        with make_executor(args, device) as executor, using(executor), using_device(device):
            run(cfg, work, args.out, args.stage)
    except (DatasetError, ValueError, FileNotFoundError, FileExistsError) as exc:
        logging.getLogger("exporter").error("%s", exc)
        return 2
    return 0


def reuse_monte_carlo(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from exporter.data import DatasetError
    from exporter.reuse import reuse

    try:
        cfg = load_config(args.config, args.set)
        reuse(cfg, args.work or Path("work") / cfg.bundle.name, args.source)
    except (DatasetError, ValueError, FileNotFoundError, FileExistsError) as exc:
        logging.getLogger("exporter").error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
