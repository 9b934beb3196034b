"""What every ``likeness`` command shares: the rich console, the progress bar, error lines, exit codes
and the face-engine options. One home, so the command modules import it and :mod:`lora_likeness.cli`
only wires the commands together."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading

from .progress import Progress

EXIT_USAGE = 2  # a setting the user must fix
EXIT_CANCELLED = 130  # Ctrl-C, as the shell reports SIGINT


def make_console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # piped or logged: keep the table on one line per group
    return console


class RichProgress(Progress):
    """:class:`lora_likeness.progress.Progress` drawn with rich; Ctrl-C cancels between items."""

    def __init__(self, console, enabled: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        super().__init__()
        self.bar = Bar(
            TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}", style="dim"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, disable=not enabled,
        )
        self.task = None

    def start(self, total: int, description: str = "") -> None:
        super().start(total, description)
        if self.task is None:
            self.bar.start()
        self.task = self.bar.add_task(description, total=total, detail="")

    def advance(self, count: int = 1, detail: str | None = None) -> None:
        super().advance(count, detail)
        self.bar.update(self.task, advance=count, detail=(detail or "")[-40:])

    def finish(self) -> None:
        self.bar.update(self.task, detail="")

    def close(self) -> None:
        if self.task is not None:  # stopping a bar that never started prints an empty line
            self.bar.stop()


def cli_pack_advice():
    """What the CLI says to do about a missing face-model pack: its folders, ``--pack PATH``, ``--download``."""
    from .faces import PackAdvice

    return PackAdvice(
        install="a folder named '{pack}' in one of those places — in ComfyUI that is ComfyUI/models/insightface/models/{pack}/, "
                "otherwise ~/.insightface/models/{pack}/ —",
        point_to_folder="or pass the folder itself with --pack PATH",
        folder_missing="Pass --pack a folder that holds the pack's .onnx files (e.g. .../models/insightface/models/buffalo_l), "
                       "or a pack name.",
        download="`likeness score --download` fetches a public insightface pack (buffalo_l, buffalo_s, antelopev2) from "
                 "insightface's release page (non-commercial licence).",
    )


def print_error(console, message: str | BaseException) -> None:
    """Print ``error: <message>``; a missing face pack is explained with the CLI's options."""
    from rich.text import Text

    from .faces import PackNotFoundError

    if isinstance(message, PackNotFoundError):
        message = message.message(cli_pack_advice())
    console.print(Text.assemble(("error: ", "bold red"), str(message)))


def load_face_engine(args: argparse.Namespace, err):
    """The face engine the command's ``--pack``/``--providers``/``--download``/``--det-thresh`` name, or
    None after printing why it cannot load (the caller exits with :data:`EXIT_USAGE`)."""
    from .faces import FaceEngine, FaceModelError, PackNotFoundError

    try:
        return FaceEngine.load(args.pack, providers=args.providers, download=args.download, det_thresh=args.det_thresh)
    except (PackNotFoundError, FaceModelError) as exc:
        print_error(err, exc)
        return None


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pack", default=os.environ.get("LIKENESS_PACK", "buffalo_l"),
                        help="face-model pack: a name searched in the usual places, or a folder path (default: buffalo_l, or $LIKENESS_PACK)")
    parser.add_argument("--providers", default="auto",
                        help="onnxruntime providers: auto, cpu, cuda, coreml, directml, or a comma-separated list (default: auto)")


@contextlib.contextmanager
def interrupt_cancels(progress: Progress):
    """Within this block the first Ctrl-C cancels ``progress`` (the work stops cleanly at its next
    check, saving what it can); a second one raises :class:`KeyboardInterrupt` at once. Python's own
    handler is back afterwards. Off the main thread (hosts) signals cannot be handled: nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_interrupt(signum, frame):
        if progress.cancelled():
            raise KeyboardInterrupt
        progress.cancel()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
