"""`atelier` command line: models, batch, convert, demo, train-style, train-lora.

Each sub-command is a client module that registers itself through an `add_parser(subparsers)`
function (models_cli, batch, demo, train_cli); this module only gathers them. Importing it, and
building the parser, needs no torch: a command that needs it imports it when it runs.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..core.errors import AtelierError
from .runtime import RuntimeNotFound

# (module relative to the package root, what it adds): imported lazily so one broken
# sub-command does not take the others down.
SUBCOMMANDS = (
    ("client.models_cli", "models"),
    ("client.batch", "batch / convert"),
    ("client.demo", "demo"),
    ("client.train_cli", "train-style / train-lora"),
    ("client.controlnet_cli", "train-controlnet"),
    ("client.dataset_cli", "dataset"),
)


def pack_version() -> str:
    """The installed distribution's version, else the one pyproject.toml declares (a plain clone
    in custom_nodes that was never pip-installed)."""
    from importlib import metadata
    from pathlib import Path

    try:
        return metadata.version("comfyui-atelier")
    except metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    for line in pyproject.read_text().splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atelier", description="comfyui-atelier command line tools.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {pack_version()}")
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
    except (AtelierError, RuntimeNotFound) as exc:
        print(f"atelier {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
