#!/usr/bin/env bash
# Regenerate the shipped workflows: API form from scripts/make_workflows.py (workflows/api/) and
# scripts/make_workflows_v12.py (workflows/v12/), UI form through ComfyUI's own frontend (a throwaway
# server with tiny weights) straight into example_workflows/, where the template browser finds it.
set -euo pipefail
PACK_DIR=$(cd "$(dirname "$0")/.." && pwd)
WORK=$("$PACK_DIR/scripts/setup_env.sh" | tail -n 1)
cd "$PACK_DIR"
"$WORK/venv/bin/python" scripts/make_workflows.py > /dev/null
"$WORK/venv/bin/python" scripts/make_workflows_v12.py > /dev/null
NODE_PATH="$WORK/node/node_modules" "$WORK/venv/bin/python" scripts/with_server.py -- \
  node tests/integration/browser/export_ui.js {url} example_workflows workflows/api/*.json workflows/v12/*.json
