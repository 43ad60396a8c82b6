"""The `glmc` command line: `glmc data | ...`.

Every user error (`GlmcError`) is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from glmc.data.datasets import DATASETS, DataConfig, create_dataset
from glmc.data.longtail import SPLITS
from glmc.errors import GlmcError

DATA_ROOT_ENV = "GLMC_DATA_ROOT"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except GlmcError as error:
        print(f"glmc: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("glmc: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glmc", description="GLMC for long-tailed image classification.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data_command(commands)
    return parser


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DataConfig()
    parser.add_argument("--dataset", default=defaults.dataset, help=f"one of: {', '.join(DATASETS.names())}")
    parser.add_argument(
        "--data-root",
        default=os.environ.get(DATA_ROOT_ENV, defaults.data_root),
        help=f"folder holding the dataset, e.g. cifar-10-batches-py/ (default: ${DATA_ROOT_ENV} or ./data)",
    )
    parser.add_argument("--imbalance-factor", type=float, default=defaults.imbalance_factor, help="n_max / n_min, >= 1")
    parser.add_argument("--split", default=defaults.split, help=f"split protocol: {', '.join(SPLITS.names())}")
    parser.add_argument("--download", action="store_true", help="fetch the official archive (MD5-checked) if missing")


def data_config_from(args: argparse.Namespace) -> DataConfig:
    return DataConfig(
        dataset=args.dataset,
        data_root=args.data_root,
        imbalance_factor=args.imbalance_factor,
        split=args.split,
        download=args.download,
    )


def add_data_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("data", help="print the dataset card of a long-tailed dataset")
    add_data_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the card as one JSON object")
    parser.set_defaults(run=run_data)


def run_data(args: argparse.Namespace) -> int:
    card = create_dataset(data_config_from(args)).card()
    print(json.dumps(card.to_json()) if args.json else card.render())
    return 0



if __name__ == "__main__":
    sys.exit(main())
