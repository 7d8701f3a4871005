#!/usr/bin/env bash
# Regenerate the shipped workflows: API form from scripts/make_workflows.py and
# scripts/make_workflows_v1_2.py, UI form through ComfyUI's own frontend (a throwaway server with tiny
# weights), copies for the template browser.
set -euo pipefail
PACK_DIR=$(cd "$(dirname "$0")/.." && pwd)
WORK=$("$PACK_DIR/scripts/setup_env.sh" | tail -n 1)
cd "$PACK_DIR"
"$WORK/venv/bin/python" scripts/make_workflows.py > /dev/null
"$WORK/venv/bin/python" scripts/make_workflows_v1_2.py > /dev/null
for folder in workflows workflows/v1_2; do
  NODE_PATH="$WORK/node/node_modules" "$WORK/venv/bin/python" scripts/with_server.py -- \
    node tests/integration/browser/export_ui.js {url} "$folder/ui" "$folder"/api/*.json
  cp "$folder"/ui/*.json example_workflows/
done
