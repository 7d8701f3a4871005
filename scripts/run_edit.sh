#!/usr/bin/env bash
# README command 1: set everything up (scripts/setup_env.sh), start a real ComfyUI with this pack,
# queue the bundled edit workflow on the bundled photo and write the edited image (default out/edited.png).
#   scripts/run_edit.sh [--models DIR] [--image PHOTO] [--instruction TEXT] [--seed N] [--out PATH]
set -euo pipefail
PACK_DIR=$(cd "$(dirname "$0")/.." && pwd)
WORK=$("$PACK_DIR/scripts/setup_env.sh" | tail -n 1)
export STEP1X_WORK=$WORK
exec "$WORK/venv/bin/python" "$PACK_DIR/scripts/run_edit.py" "$@"
