"""`python -m bench [NAME [OPTIONS...]]`: run one benchmark, or all of them without a name."""

from __future__ import annotations

import importlib
import logging
import sys

from bench import BENCHMARKS, DIAGNOSTICS


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if argv and argv[0] in ("-h", "--help"):
        print("usage: python -m bench [NAME [OPTIONS...]]\nbenchmarks: " + ", ".join(BENCHMARKS))
        return 0
    if not argv:
        codes = [
            importlib.import_module(module).main([])
            for name, module in BENCHMARKS.items()
            if name not in DIAGNOSTICS
        ]
        return max(codes, default=0)
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}")
        return 2
    code: int = importlib.import_module(BENCHMARKS[name]).main(rest)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
