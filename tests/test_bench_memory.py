"""The benchmark's memory figure is each step's own, even when the process that started it was big."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A parent that touches 400 MiB, then starts a small step and reports both figures the step could give.
PARENT = r"""
import json, resource, subprocess, sys
big = bytearray(400 * 1024 * 1024)
for i in range(0, len(big), 4096):
    big[i] = 1
child = (
    "import json, resource; from bench.memory import peak_rss_mb; "
    "print(json.dumps([peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]))"
)
print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout)
"""


def test_a_small_step_reports_a_small_peak_after_a_big_parent() -> None:
    out = subprocess.run([sys.executable, "-c", PARENT], capture_output=True, text=True, check=True, cwd=ROOT)
    own, inherited = json.loads(out.stdout)
    assert own < 100  # the step's own high-water mark: an interpreter, a few tens of MiB
    assert inherited > 400  # what getrusage reports in the same step: the parent's 400 MiB carried over
