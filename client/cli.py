"""`atelier` command line: models, batch, convert, demo, train-style.

Each sub-command lives beside the code it drives and registers itself through an
`add_parser(subparsers)` function; this module only gathers them. Importing it needs no torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..core.errors import AtelierError

# (module relative to the package root, what it adds): imported lazily so one broken
# sub-command does not take the others down.
SUBCOMMANDS = (
    ("client.models_cli", "models"),
    ("client.batch", "batch / convert"),
    ("client.demo", "demo"),
    ("core.style_train", "train-style"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atelier", description="comfyui-atelier command line tools.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    package = __package__.rsplit(".", 1)[0]
    for module, what in SUBCOMMANDS:
        try:
            mod = importlib.import_module(f"{package}.{module}")
        except ImportError as exc:
            print(f"atelier: the '{what}' command is unavailable: {exc}", file=sys.stderr)
            continue
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except AtelierError as exc:
        print(f"atelier {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
