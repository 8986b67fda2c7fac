"""Facts about local processes shared by the run-directory lock and the device runners."""
from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
