#!/usr/bin/env bash
# Infinity (infinity-emb) in its own virtual environment: it needs transformers 4.x, nestrank needs 5.x.
# The local CPU torch first, then infinity with torch pinned so no resolver pulls a CUDA build.
set -euo pipefail
venv="${1:-.venv-infinity}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet "torch==2.13.0"
constraints="$(mktemp)"
echo "torch==2.13.0" > "$constraints"
"$venv/bin/pip" install --quiet "infinity-emb[server,torch,optimum]" -c "$constraints"
"$venv/bin/infinity_emb" --help > /dev/null
echo "installed Infinity in $venv"
