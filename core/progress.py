"""One progress + cancellation interface that every front door implements.

Long work calls ``progress.start(total, description)``, then ``progress.advance()`` per item, and
``progress.check()`` between items, which raises :class:`Cancelled` once the user cancelled
(Ctrl-C in the CLI, the stop button in ComfyUI, Interrupt in A1111). The CLI renders it with rich,
ComfyUI with ``comfy.utils.ProgressBar``, A1111 through ``shared.state``.
"""

from __future__ import annotations

import threading
from typing import Callable


class Cancelled(Exception):
    """The user cancelled; work done so far (cached faces, written files) is kept."""


class Progress:
    """Base implementation: counts, and a cancellation flag; subclasses draw."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.description = ""
        self._cancel = threading.Event()

    def start(self, total: int, description: str = "") -> None:
        self.total, self.done, self.description = int(total), 0, description

    def advance(self, count: int = 1, detail: str | None = None) -> None:
        self.done += count

    def finish(self) -> None:
        pass

    def cancel(self) -> None:
        self._cancel.set()

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self.cancelled():
            raise Cancelled(f"cancelled during {self.description or 'work'} after {self.done} of {self.total}")


class CallbackProgress(Progress):
    """Calls ``on_update(done, total, description, detail)`` after each step; ``is_cancelled()``
    is polled by :meth:`cancelled` (hosts plug their own flags in here)."""

    def __init__(
        self,
        on_update: Callable[[int, int, str, str | None], None] | None = None,
        is_cancelled: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__()
        self._on_update = on_update
        self._is_cancelled = is_cancelled

    def start(self, total: int, description: str = "") -> None:
        super().start(total, description)
        if self._on_update:
            self._on_update(self.done, self.total, self.description, None)

    def advance(self, count: int = 1, detail: str | None = None) -> None:
        super().advance(count, detail)
        if self._on_update:
            self._on_update(self.done, self.total, self.description, detail)

    def cancelled(self) -> bool:
        return super().cancelled() or bool(self._is_cancelled and self._is_cancelled())
