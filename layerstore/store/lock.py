"""The store lock: flock on root/lock, shared or exclusive, which only the Store facade takes.

Who holds it how (each Store method says which):
  - shared: an import from before it writes its first object until its index commit, and
    whoever reads object files through an index snapshot (checkout, save, export, open, du,
    fsck, building overlay layer dirs), so that gc never frees an object about to be
    referenced or being read;
  - exclusive: gc and fsck --repair, which delete or rewrite objects.
Index reads and writes that touch no object file (images, tag, rm, add_image) take no lock:
LMDB gives every reader a snapshot and one writer at a time.

Each holder opens its own file description, so threads of one process lock like processes;
a thread that holds the lock may take it again (a progress callback that calls the Store).
flock favours no one, so back-to-back imports whose shared holds overlap would starve gc's
exclusive request: a gate gives the waiting exclusive holder the next turn.  Every holder first
takes root/lock.gate (shared, for an instant, for shared holders) and keeps it only until it
has the lock; an exclusive holder waiting in the gate stops new shared holders there, and gets
the lock once those inside have finished.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from ..errors import StoreLocked


class StoreLock:
    """The lock of the store at root; waits at most timeout seconds (then StoreLocked)."""

    def __init__(self, root: str, timeout: float) -> None:
        self.root = root
        self.timeout = timeout
        self._path = os.path.join(root, "lock")
        self._tls = threading.local()       # the mode this thread holds, see held()

    def held(self) -> bool:
        """Whether this thread holds the lock (in either mode)."""
        return getattr(self._tls, "mode", None) is not None

    def shared(self):
        return self._hold(exclusive=False)

    def exclusive(self):
        return self._hold(exclusive=True)

    @contextmanager
    def _hold(self, exclusive: bool) -> Iterator[None]:
        held = getattr(self._tls, "mode", None)
        if held is not None:
            if exclusive and held != fcntl.LOCK_EX:
                raise RuntimeError("the store lock is held shared by this thread: an exclusive "
                                   "request would wait for itself")
            yield
            return
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + self.timeout
        fd = os.open(self._path, os.O_RDWR | os.O_CLOEXEC)
        try:
            gate = os.open(os.path.join(self.root, "lock.gate"),
                           os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                self._flock(gate, mode, deadline)
                self._flock(fd, mode, deadline)
            finally:
                os.close(gate)
            self._tls.mode = mode
            try:
                yield
            finally:
                self._tls.mode = None
        finally:
            os.close(fd)

    @contextmanager
    def exclusive_if_free(self) -> Iterator[bool]:
        """The lock exclusively if no one holds it now (yields True), else nothing (False): for
        work that may as well be left to gc.  Passes by the gate: it never waits."""
        fd = os.open(self._path, os.O_RDWR | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def _flock(self, fd: int, mode: int, deadline: float) -> None:
        # Polled, not blocking, so that the timeout holds; the first retries come soon, as
        # most waits are for a gate passed in microseconds.
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreLocked(f"the store at {self.root} is locked by another "
                                      f"process (waited {self.timeout:g} s)") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
