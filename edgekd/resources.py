"""Files edgekd ships beside its code: target YAMLs, calibration recipes and records, the remote benchmark script.

In the repository they stay where the product layout puts them (`targets/`, `calibration/`, `tools/`); a built wheel
carries copies under `edgekd/_shipped/` (see setup.py). `shipped_path` finds them in either place, so a checkout,
an editable install and a wheel install behave the same.
"""
from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_SHIPPED = _PACKAGE / "_shipped"
_CHECKOUT = _PACKAGE.parent


def shipped_path(relative: str) -> Path:
    """The shipped file or folder `relative` ("targets", "calibration/default.yaml", "tools/remote_ort_bench.py")."""
    inside = _SHIPPED / relative
    if inside.exists():
        return inside
    return _CHECKOUT / relative


def locate(path: str | os.PathLike) -> Path:
    """`path` as given when it exists (or is absolute), else its shipped copy when there is one, else `path`.

    So the default "calibration/default.yaml" resolves from any working directory and from a wheel install, while
    a user's own relative path keeps meaning "from here" (and a missing one is reported as the user wrote it).
    """
    given = Path(path)
    if given.exists() or given.is_absolute():
        return given
    shipped = shipped_path(str(given))
    return shipped if shipped.exists() else given
