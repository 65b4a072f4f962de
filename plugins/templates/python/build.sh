#!/usr/bin/env bash
# Builds {{name}}.wasm, installing componentize-py into .venv/ the first time.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/componentize-py ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check componentize-py==0.25.1
fi
.venv/bin/componentize-py -d wit/plugin-0.2.0 -w plugin componentize app -o {{name}}.wasm
