"""Start vLLM from `CAI_GENERATOR_*` settings.

python -m services.generator            # exec `vllm serve ...` (the container entry point)
python -m services.generator --print    # print the command line (key masked) and exit
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

from services.generator.command import build_argv, build_env, redacted
from services.generator.settings import GeneratorSettings
from services.modelfiles.convert import ensure_folder

logger = logging.getLogger("services.generator")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Start vLLM from CAI_GENERATOR_* settings.")
    parser.add_argument("--print", action="store_true", help="print the command and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = GeneratorSettings()
    if not args.print:
        # vLLM's LoRA path wants a plain checkpoint: a .gguf is served as its converted folder.
        settings.model = ensure_folder(settings.model, Path(settings.converted_models_dir))
    command = build_argv(settings)
    if args.print:
        print(shlex.join(redacted(command)))
        return
    if shutil.which(command[0]) is None:
        sys.exit(
            f"vLLM executable {command[0]!r} not found: set CAI_GENERATOR_VLLM_EXECUTABLE "
            "(e.g. .venv-vllm/bin/vllm after `make install`)"
        )
    logger.info("starting: %s", shlex.join(redacted(command)))
    os.execvpe(command[0], command, os.environ | build_env(settings))


if __name__ == "__main__":
    main()
