"""One progress + cancellation interface that every front door implements.

Long work calls ``progress.start(total, description)``, then ``progress.advance()`` per item, and
``progress.check()`` between items, which raises :class:`Cancelled` once the user cancelled
(Ctrl-C in the CLI, the stop button in ComfyUI, Interrupt in A1111). The CLI renders it with rich,
ComfyUI with ``comfy.utils.ProgressBar``, A1111 through ``shared.state``.
"""

from __future__ import annotations

import threading


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
