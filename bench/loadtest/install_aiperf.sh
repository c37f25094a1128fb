#!/usr/bin/env bash
# AIPerf (NVIDIA's load tester for inference endpoints) in its own virtual environment: it pins versions of its own
# (prometheus-client, pandas, transformers ...) that are not nestrank's. Usage: $0 [venv], default .venv-aiperf.
set -euo pipefail
venv="${1:-.venv-aiperf}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet "aiperf>=0.3"
"$venv/bin/aiperf" --version > /dev/null || "$venv/bin/aiperf" --help > /dev/null
echo "installed AIPerf in $venv: $venv/bin/aiperf"
