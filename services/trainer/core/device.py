"""Which device jobs run on. The web process never imports torch: `auto` asks a short-lived
interpreter only on machines that have an NVIDIA device node."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def resolve_device(setting: str) -> str:
    if setting != "auto":
        return setting
    if not Path("/dev/nvidiactl").exists():
        return "cpu"
    try:
        out = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return "cuda" if int(out.stdout.strip() or 0) > 0 else "cpu"
    except (subprocess.SubprocessError, ValueError, OSError) as exc:
        logger.warning("could not ask torch about CUDA (%s); running jobs on cpu", exc)
        return "cpu"
