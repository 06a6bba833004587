#!/usr/bin/env bash
# Start the ComfyUI that scripts/setup.sh installed, with this pack loaded and models/ in this checkout, on
# http://127.0.0.1:8188. Options (--port, --cpu, --check, ...): `bash scripts/serve.sh --help`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ADAPTBIR_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "serve.sh: expected the Python environment made by setup.sh at $VENV, found none; run \`bash scripts/setup.sh\` first" >&2
  exit 2
fi
exec "$VENV/bin/python" "$ROOT/scripts/serve.py" "$@"
