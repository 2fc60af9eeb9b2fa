"""A job's lease: one process runs a job at a time, across processes and hosts sharing a state store.

The holder renews its lease from a thread while it works; a lease not renewed within ``LEASE_TTL`` expires,
so a process that died hands its job over by then. A holder on this host that no longer exists is seen at
once and its lease taken over.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import timedelta

from sqlalchemy.exc import SQLAlchemyError

from sync.clock import Clock
from sync.store import Store

log = logging.getLogger(__name__)

# A lease lives this long without a heartbeat; the holder renews it three times per period.
LEASE_TTL = timedelta(seconds=60)


def process_owner() -> str:
    """A lease owner name that tells an operator which process holds a job: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def holder_is_dead(owner: str) -> bool:
    """True when ``owner`` names a process of this host that has exited (killed, crashed)."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def acquire(store: Store, job: str, owner: str, clock: Clock, ttl: timedelta = LEASE_TTL) -> bool:
    """Take the job's lease; take it over from a holder of this host that no longer exists."""
    now = clock()
    if store.acquire_lease(job, owner, now, ttl):
        return True
    lease = store.lease(job)
    if lease is None or not holder_is_dead(lease.owner):
        return False
    log.warning(
        "the job's lease is held by a process of this host that no longer exists; taking it over",
        extra={"job": job, "holder": lease.owner},
    )
    return store.take_over_lease(job, lease.owner, owner, now, ttl)


def release(store: Store, job: str, owner: str) -> None:
    try:
        store.release_lease(job, owner)
    except SQLAlchemyError:
        log.warning("could not release the job's lease; it expires by itself", extra={"job": job})


class Heartbeat:
    """Renews the job's lease from a thread while the run works; sets ``lost`` if the lease was taken."""

    def __init__(self, store: Store, job: str, owner: str, clock: Clock, ttl: timedelta, lost: threading.Event) -> None:
        self.store, self.job, self.owner, self.clock, self.ttl, self.lost = store, job, owner, clock, ttl, lost
        self.run_id: int | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{job}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def attach(self, run_id: int) -> None:
        """The run holding the lease has its id: say so now, not at the next beat."""
        self.run_id = run_id
        try:
            self.store.renew_lease(self.job, self.owner, self.clock(), self.ttl, run_id)
        except SQLAlchemyError:
            log.warning("could not record the run's id on its lease", extra={"job": self.job})

    def finish(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _beat(self) -> None:
        interval = self.ttl.total_seconds() / 3
        while not self._done.wait(interval):
            try:
                renewed = self.store.renew_lease(self.job, self.owner, self.clock(), self.ttl, self.run_id)
            except Exception:
                log.warning("could not renew the job's lease; retrying", extra={"job": self.job}, exc_info=True)
                continue
            if not renewed:
                self.lost.set()
                log.error("the job's lease was taken over; stopping this run", extra={"job": self.job})
                return
