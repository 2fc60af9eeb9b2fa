"""The circuit breaker for an unreachable destination.

Attempts that end without any HTTP answer (the connection refused, reset or dropped, or no answer within the
timeout) are counted in a row; any HTTP answer, whatever its status, resets the count. Once ``failures``
attempts in a row failed that way over at least ``min_seconds``, the destination is taken to be unreachable
and the breaker opens for the rest of the run: no more requests are made, and the run stops and says so
instead of retrying for hours. The next run tries again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Twice the default connections: every connection failed at least twice in a row.
BREAKER_FAILURES = 40
# A brief blip (a restart, a load balancer swap) does not stop a run: the failures must span this long.
BREAKER_MIN_SECONDS = 15.0


@dataclass
class Breaker:
    failures: int = BREAKER_FAILURES
    min_seconds: float = BREAKER_MIN_SECONDS
    clock: Callable[[], float] = time.monotonic
    in_a_row: int = 0
    since: float | None = None
    opened: bool = False
    last_reason: str | None = field(default=None)

    def answered(self) -> None:
        """An HTTP answer arrived: the destination is reachable."""
        self.in_a_row, self.since = 0, None

    def unanswered(self, reason: str) -> bool:
        """An attempt got no HTTP answer; True when this opens the breaker."""
        now = self.clock()
        self.in_a_row += 1
        self.since = now if self.since is None else self.since
        self.last_reason = reason
        if not self.opened and self.in_a_row >= self.failures and now - self.since >= self.min_seconds:
            self.opened = True
            return True
        return False
