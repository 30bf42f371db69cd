"""A progress bar for long operations (materialize, diagnose, lsuv_, weight files, the CLI).

It appears on stderr only once the operation has run :data:`PROGRESS_AFTER_S` seconds
(a timer shows it even while one long step runs, so a slow forward pass is not a silent
wait), only when stderr is a terminal unless asked for (``mode=True``), and never with
``mode=False``. Inside another bar (``torchinit report`` runs ``diagnose`` and ``lsuv_``)
it stays silent: rich shows one live display at a time. Importable from every layer: it
imports nothing of torchinit, and rich only when a bar is shown.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")

#: A progress bar appears when an operation has run longer than this many seconds.
PROGRESS_AFTER_S = 2.0

_lock = threading.Lock()
_open: list["_Progress"] = []  # bars that may show (at most one: the outermost)


class _Progress:
    """``what`` (the operation's name) over ``total`` units; :meth:`advance` as units are
    done, :meth:`close` at the end (or use it as a context manager). It closes itself once
    ``total`` units are done."""

    def __init__(self, what: str, total: int, mode: bool | None = None, *, after: float | None = None) -> None:
        self.what, self.total = what, max(int(total), 1)
        self.after = PROGRESS_AFTER_S if after is None else after
        self.start = time.perf_counter()
        self.done, self.label = 0, ""
        self.bar: Any = None
        self.task: Any = None
        self.closed = False
        self.timer: threading.Timer | None = None
        wanted = mode is True or (mode is None and sys.stderr.isatty())
        with _lock:
            self.enabled = wanted and not _open  # nested: the outer bar speaks
            if self.enabled:
                _open.append(self)
        if self.enabled:
            self.timer = threading.Timer(max(self.after, 0.0), self._show)
            self.timer.daemon = True
            self.timer.start()

    def _show(self) -> None:
        with _lock:
            if self.closed or self.bar is not None:
                return
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn(self.what), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                TextColumn("{task.description}"), TimeElapsedColumn(),
                console=Console(stderr=True), transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=self.total, completed=self.done)

    def set_label(self, label: str) -> None:
        """Say what is being worked on now."""
        self.advance(0, label)

    def advance(self, n: int = 1, label: str | None = None) -> None:
        """``n`` more units done; ``label`` says what is being worked on now."""
        if not self.enabled or self.closed:
            return
        self.done += n
        if label is not None:
            self.label = label
        if self.bar is None and time.perf_counter() - self.start >= self.after:
            self._show()  # the timer thread may not have run yet
        with _lock:
            if self.bar is not None:
                # drawn now, not at the next tick of rich's refresh thread: every step shows
                self.bar.update(self.task, completed=self.done, description=self.label, refresh=True)
        if n and self.done >= self.total:
            self.close()

    def close(self) -> None:
        """Finish the bar (if it was shown); idempotent."""
        if self.timer is not None:
            self.timer.cancel()
        with _lock:
            if self.closed:
                return
            self.closed = True
            if self in _open:
                _open.remove(self)
            if self.bar is not None:
                self.bar.update(self.task, completed=self.total, description="done")
                self.bar.stop()

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()



def _track(items: Iterable[T], what: str, *, mode: bool | None = None,
           label: Callable[[T], str] = str) -> Iterator[T]:
    """Iterate ``items`` under a progress bar (one unit per item, labelled ``label(item)``);
    the bar closes when the loop ends, also by an exception or a ``break``."""
    items = list(items)
    bar = _Progress(what, len(items), mode)
    try:
        for item in items:
            bar.set_label(label(item))
            yield item
            bar.advance(1)
    finally:
        bar.close()
