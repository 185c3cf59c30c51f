#!/usr/bin/env bash
# Build a venv with the real sglang from PyPI, for tests/test_real_*.py and the scan tests:
# 0.5.13 installed in the venv, 0.5.23 as a --target tree in DIR/sglang-0.5.23
# (chosen with PYTHONPATH=DIR/sglang-0.5.23).
#   usage: scripts/make_sglang_venv.sh DIR      (about 6 GB and 2-5 minutes on this machine)
# A DIR this script built before (same script: a stamp holds its hash) is
# reused: only the editable npu_compat is pointed at this checkout (seconds).
# CI can therefore cache DIR keyed by this file's hash.
# sglang is installed with --no-deps, plus only what importing its scheduler
# and overlap_utils needs on a CPU; torchvision is required at import, and
# 0.29.1 is the build that matches a torch (2.14.1) lying on this disk.
set -euo pipefail
dir=${1:?usage: $0 DIR}
here=$(cd "$(dirname "$0")/.." && pwd)
stamp=$(sha256sum "$0" | cut -d' ' -f1)
check() {
    "$dir/bin/python" -c "import sglang.srt.managers.overlap_utils, npu_compat" &&
    PYTHONPATH="$dir/sglang-0.5.23" "$dir/bin/python" -c "import sglang, sglang.srt.managers.overlap_utils; assert sglang.__version__ == '0.5.23'"
}
if [ "$(cat "$dir/.npu-compat-stamp" 2>/dev/null)" = "$stamp" ]; then
    "$dir/bin/pip" install -q --no-deps -e "$here"
    if check; then
        echo "make_sglang_venv: reusing $dir (built by this same script)"
        exit 0
    fi
fi
rm -f "$dir/.npu-compat-stamp"
python3 -m venv "$dir"
"$dir/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 \
    orjson psutil pybase64 requests packaging starlette tqdm ipython pydantic aiohttp \
    huggingface_hub pyzmq transformers==5.8.1 openai partial_json_parser dill sentencepiece \
    setproctitle einops compressed_tensors gguf msgspec uvicorn fastapi apache-tvm-ffi wrapt
"$dir/bin/pip" install -q --no-deps sglang==0.5.13
"$dir/bin/pip" install -q --no-deps --target "$dir/sglang-0.5.23" sglang==0.5.23
"$dir/bin/pip" install -q --no-deps -e "$here"
check
echo "$stamp" > "$dir/.npu-compat-stamp"
