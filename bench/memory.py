"""A process's own peak resident memory.

``getrusage(RUSAGE_SELF).ru_maxrss`` is carried across ``fork`` and ``exec`` on Linux: a step started by a
parent that once used 5 GB reports 5 GB, whatever the step used. ``VmHWM`` in ``/proc/self/status`` is the
high-water mark of this process's own address space, which starts afresh at ``exec``. Elsewhere (no
``/proc``), ``ru_maxrss`` is the best there is.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
