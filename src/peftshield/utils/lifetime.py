"""Worker processes that die with their parent, and a driver that stops its workers on SIGTERM.

A grid's worker processes hold hundreds of MB each; when ``bench run`` is killed (``kill -9``,
SIGTERM, a closed terminal) they must not run on as orphans (bench/README.md "Grid executors and scale").
Two mechanisms, because neither covers every case alone:

- on Linux, ``prctl(PR_SET_PDEATHSIG)`` asks the kernel to signal the worker the moment the
  thread that started it exits, whatever killed it;
- everywhere, a daemon thread that polls the parent's process id and ends the worker when the
  parent is gone (the worker was re-parented); it also covers a parent that died before the
  worker could call ``prctl``.

The driver's side is :func:`terminate_on_sigterm`: SIGTERM raises :class:`Terminated` in the main
thread, so the executor's clean-up (stopping its workers) runs before the process exits.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: prctl option number of PR_SET_PDEATHSIG (linux/prctl.h).
PR_SET_PDEATHSIG = 1
#: How often the watchdog thread checks that the parent is alive.
WATCHDOG_SECONDS = 1.0


class Terminated(SystemExit):
    """The driver received SIGTERM: unwinds like ``sys.exit(143)`` so that clean-up code runs."""


def _set_parent_death_signal(sig: int) -> bool:
    """Ask the Linux kernel to send ``sig`` to this process when its parent dies; ``False`` elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _parent_gone(parent_pid: int) -> bool:
    if os.getppid() != parent_pid:  # re-parented: the parent died
        return True
    try:
        os.kill(parent_pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    return False


def die_with_parent(parent_pid: int, *, interval: float = WATCHDOG_SECONDS) -> None:
    """Make this (worker) process end when the process ``parent_pid`` ends (see the module docstring).

    Call it first thing in a worker: a pool initializer. Ends the process at once if the parent is
    already gone.
    """
    _set_parent_death_signal(signal.SIGKILL)
    if _parent_gone(parent_pid):
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(interval)
            if _parent_gone(parent_pid):
                os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


@contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (exit status 143) in the main thread.

    Outside the main thread (where Python cannot install handlers) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
