"""Ctrl-C (SIGINT) that is never lost and never a traceback.

Python raises a Ctrl-C's KeyboardInterrupt wherever the main thread happens to be. Where that is
a garbage-collector callback (JAX registers one, and it runs often while JAX imports), Python
prints it as "Exception ignored ... Traceback" and goes on as if no key had been pressed. Within
`catching_ctrl_c()` a Ctrl-C also sets a flag, which `stop_if_interrupted()` turns back into
the KeyboardInterrupt at the next safe point, and such a swallowed interrupt prints nothing.
"""

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

INTERRUPTED = 130  # the exit code of a program Ctrl-C ended, as a shell reports SIGINT

_pressed = threading.Event()


def _raise(signum, frame):
    _pressed.set()
    raise KeyboardInterrupt


def _hold(signum, frame):
    _pressed.set()


def stop_if_interrupted() -> None:
    """Raises KeyboardInterrupt where Ctrl-C was pressed but its exception got lost."""
    if _pressed.is_set():
        raise KeyboardInterrupt


def _ours() -> bool:
    return (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) in (_raise, _hold))


@contextmanager
def catching_ctrl_c() -> Iterator[None]:
    """Within it, Ctrl-C raises KeyboardInterrupt and sets the flag `stop_if_interrupted` reads;
    the KeyboardInterrupt Python swallows is not printed. A nested use shares the outer one's
    flag; outside the main thread (where Python runs no signal handler) it does nothing."""
    if threading.current_thread() is not threading.main_thread() or _ours():
        yield
        return
    _pressed.clear()
    handler = signal.signal(signal.SIGINT, _raise)
    hook = sys.unraisablehook

    def unraisable(info):
        if not (isinstance(info.exc_value, KeyboardInterrupt) and _pressed.is_set()):
            hook(info)

    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        sys.unraisablehook = hook
        signal.signal(signal.SIGINT, handler)


@contextmanager
def held() -> Iterator[None]:
    """Within `catching_ctrl_c()`: a Ctrl-C during the block raises only once the block has
    ended, for work that must not be cut off halfway."""
    if not _ours():
        yield
        return
    signal.signal(signal.SIGINT, _hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, _raise)
    stop_if_interrupted()
