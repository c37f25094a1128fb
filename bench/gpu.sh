#!/usr/bin/env bash
# On a CUDA host whose python3 already has torch, transformers and sentence-transformers (the lent GPU machine's
# image): installs the wheels in $WHEELS (onnxruntime-gpu and what the image lacks) under /tmp/site, then runs the
# GPU tests (`tests`: test_gpu.py, which is all `pytest -m gpu` selects, and test_runtime.py; $GPU_TESTS overrides)
# or one part of `nestrank bench gpu`, writing reports and logs under OUT_DIR.
#   bench/gpu.sh tests|embed|rerank [OUT_DIR]
set -uo pipefail
part=${1:?tests, embed or rerank}
out=$(realpath -m "${2:-bench/out}")
mkdir -p "$out"
root=$PWD
# /tmp/site first: this checkout's own nestrank/ folder lacks the subpackages pyproject.toml maps into it, so
# Python runs from /tmp, where no nestrank/ shadows the installed layout
export PYTHONPATH=/tmp/site:$root PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ ! -e /tmp/site/.installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "${WHEELS:-.whl}"/*.whl && touch /tmp/site/.installed || exit 1
fi
# nestrank itself, laid out as pyproject.toml installs it, without a build (links into this checkout)
mkdir -p /tmp/site/nestrank
for entry in nestrank/*; do ln -sfn "$PWD/$entry" /tmp/site/nestrank/; done
for folder in serving export clients bench api; do ln -sfn "$PWD/$folder" "/tmp/site/nestrank/$folder"; done
# onnxruntime-gpu (CUDA 13) loads cuBLAS, cuDNN and the runtime from the nvidia-* wheels the image's PyTorch uses
nvidia=$(python3 -c "import nvidia; print(list(nvidia.__path__)[0])")
LD_LIBRARY_PATH=$(find "$nvidia" -name 'lib*.so*' -printf '%h\n' | sort -u | paste -sd:):${LD_LIBRARY_PATH:-}
export LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$out/gpu-$part-smi.txt"
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
cd /tmp || exit 1
tests=(python3 -m pytest -p no:cacheprovider --rootdir "$root" -c "$root/pyproject.toml" --import-mode=importlib)
if [ "$part" = tests ]; then
  read -ra files <<<"${GPU_TESTS:-tests/unit/serving/pipeline/test_gpu.py tests/unit/serving/pipeline/test_runtime.py}"
  "${tests[@]}" -v "${files[@]/#/$root/}" 2>&1 | tee "$out/gpu-pytest.txt"
else
  python3 -m nestrank bench gpu --part "$part" --out "$out/gpu-$part.json" 2>&1 | tee "$out/gpu-$part.log"
fi
