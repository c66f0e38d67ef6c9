"""Command line: `python -m exporter run --config exporter/configs/smoke.toml --out models/x`.

Options: `--stage NAME` (repeatable) runs only those stages; `--data-dir DIR` points at an
ImageFolder root (train/, test/); `--work DIR` holds intermediate artifacts (default
work/<bundle name>); `--set section.field=value` (repeatable) overrides the preset.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from exporter.config import load_config
from exporter.data import DatasetError
from exporter.pipeline import STAGES, run


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
    p.add_argument("--stage", action="append", choices=list(STAGES), help="run only this stage")
    p.add_argument("--data-dir", help="ImageFolder root with train/ and test/")
    p.add_argument("--work", type=Path, help="work folder (default work/<bundle name>)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config field",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides = list(args.set) + ([f"data.root={args.data_dir}"] if args.data_dir else [])
    try:
        cfg = load_config(args.config, overrides)
        work = args.work or Path("work") / cfg.bundle.name
        run(cfg, work, args.out, args.stage)
    except (DatasetError, ValueError, FileNotFoundError, FileExistsError) as exc:
        logging.getLogger("exporter").error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
