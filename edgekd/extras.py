"""Optional dependency groups ("extras"): a feature whose extra is missing fails with one line that names it."""
from __future__ import annotations

import importlib
from types import ModuleType

from edgekd.errors import EdgeKDError


def require(module: str, extra: str, feature: str | None = None) -> ModuleType:
    """Import `module`, or raise EdgeKDError naming the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name is not None and e.name.split(".")[0] != top:
            raise  # the module is there but one of its own imports is broken: show that, not a wrong hint
        what = feature or module
        raise EdgeKDError(f"{what} needs the '{extra}' extra ({top} is not installed): "
                          f"pip install 'edgekd[{extra}]'") from e
