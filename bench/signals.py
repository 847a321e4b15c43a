"""SIGTERM as Ctrl-C: what a batch scheduler (SLURM's time limit, ``kill``, ``docker stop``) sends to end a run gets
the same cleanup and the same one-line resume hint as an interrupt, instead of Ray's handler (``sys.exit``, after
its C++ handler prints a stack dump)."""

import signal
import threading


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM; a ``KeyboardInterrupt``, so every interrupt path handles it."""


_RECEIVED = []  # Ray's blocking calls turn any exception a handler raises into a plain KeyboardInterrupt


def _on_sigterm(signum, frame):
    _RECEIVED.append(signum)
    raise Terminated


def terminated(exc: BaseException) -> bool:
    """Whether ``exc`` ends a run that SIGTERM stopped (raised here, or re-raised by Ray as a KeyboardInterrupt)."""
    return isinstance(exc, Terminated) or bool(_RECEIVED)


def catch_sigterm() -> None:
    """Route SIGTERM to :class:`Terminated` (main thread only). Ray's ``init`` installs its own handlers on the
    driver, so ``bench.scheduler.init_ray`` calls this again after it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
