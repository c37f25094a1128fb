#!/usr/bin/env bash
# perf_analyzer, Triton's load tester, beside this project's venv: the binary of the tritonclient 2.51.0 wheel (the
# release of the Triton that nestrank serves; later wheels need glibc 2.38 or ship no binary), unpacked into a
# folder of its own so that the venv's tritonclient stays as it is, with what it links even on a CPU host: Debian's
# libb64-0d and libcudart.so.12 (nvidia-cuda-runtime-cu12). `make setup` runs it; usage: $0 [venv]
set -euo pipefail
venv="$(realpath "${1:-.venv}")"
target="$venv/perf_analyzer"
if [ ! -x "$target/bin/perf_analyzer" ]; then
    "$venv/bin/pip" install --quiet --no-deps --target "$target" "tritonclient==2.51.0" "nvidia-cuda-runtime-cu12>=12,<13"
fi
if ! ldconfig -p | grep -q "libb64.so.0d"; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq libb64-0d
    else
        echo "perf_analyzer needs libb64-0d: sudo apt-get install libb64-0d" >&2
    fi
fi
cat > "$venv/bin/perf_analyzer" <<WRAPPER
#!/bin/sh
# perf_analyzer from tritonclient 2.51.0 (bench/loadtest/install_perf_analyzer.sh), with the CUDA runtime it links.
LD_LIBRARY_PATH="$target/nvidia/cuda_runtime/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$target/bin/perf_analyzer" "\$@"
WRAPPER
chmod +x "$venv/bin/perf_analyzer"
"$venv/bin/perf_analyzer" --version > /dev/null
echo "installed perf_analyzer as $venv/bin/perf_analyzer"
