"""SIGTERM and SIGINT as one exception that is sure to arrive.

An exception raised by a signal handler can land where Python swallows it ("Exception ignored
in ...": an at-fork hook while a DataLoader worker starts, a ``__del__``, torchrun's ``except
Exception``); the command would then run on as if nothing happened. So `Redelivery` raises it
again in the main thread every second until `stop` says it has arrived. While it is the exception
being handled (unwinding in ``__exit__`` or ``finally``, where MLflow runs are ended, or torchrun
stopping its workers), a repeated signal does nothing: it must not cut that cleanup short.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT as an exception: ``with`` blocks unwind and MLflow runs end KILLED."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Redelivery:
    """The handler of SIGTERM and SIGINT while installed: the first signal becomes ``make(signum)``
    (of type ``kind``), raised now and every second after until `stop`."""

    def __init__(self, make: Callable[[int], BaseException], kind: type[BaseException]):
        self.make, self.kind = make, kind
        self.signum: int | None = None
        self._previous: dict = {}
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self.handle) for s in SIGNALS}

    def handle(self, signum, frame) -> None:
        if self._done.is_set() or isinstance(sys.exc_info()[1], self.kind):
            return
        if self.signum is None:
            self.signum = signum
            self._thread = threading.Thread(target=self._redeliver, name="dpstudy-interrupt", daemon=True)
            self._thread.start()
        raise self.make(self.signum)

    def _redeliver(self) -> None:
        main_thread = threading.main_thread().ident
        while not self._done.wait(1.0):
            signal.pthread_kill(main_thread, self.signum)

    def stop(self) -> None:
        """The interruption arrived (or the command ended): no more re-deliveries."""
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def uninstall(self) -> None:
        self.stop()
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
