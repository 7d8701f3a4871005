#!/usr/bin/env bash
# The test command: sets up the environment (scripts/setup_env.sh) and runs every test,
# unit tests (no server) and integration tests (a real ComfyUI 0.3.75 server, headless browser).
set -euo pipefail
PACK_DIR=$(cd "$(dirname "$0")/.." && pwd)
WORK=$("$PACK_DIR/scripts/setup_env.sh" | tail -n 1)
cd "$PACK_DIR"
export STEP1X_WORK=$WORK
exec "$WORK/venv/bin/python" -m pytest tests "$@"
