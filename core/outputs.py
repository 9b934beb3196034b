"""Where a run writes: output paths checked before any work, report folders locked and swapped in whole.

A report folder (``likeness score --out``, the sweep report) is written through :class:`ReportFolder`:

    with ReportFolder(out, REPORT_FILES) as report:   # checks, creates and locks ``out``
        ...                                            # the long work: a second run is refused meanwhile
        write_bytes_atomic(report.path("scores.png"), data)   # staged, not yet in ``out``
        files = report.commit()                        # earlier report -> previous/<time>/, new one in

Leaving the block without :meth:`ReportFolder.commit` (an error, Ctrl-C) removes what was staged and
leaves the earlier report where it was. The staging folder is a hidden folder inside ``out`` (so the
swap is a few renames on one file system, and it needs no right beyond ``out`` itself); only the
report's own files are swapped, never other files the user keeps in ``out`` (a sweep's images).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".likeness.lock"
STAGING_PREFIX = ".likeness-new-"
PREVIOUS = "previous"
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}
# Windows locks bytes, and other processes cannot read locked bytes: lock one far past the pid text.
_WINDOWS_LOCK_OFFSET = 1 << 20


class OutputError(Exception):
    """An output path that cannot be written; the message names the path and the problem."""


class OutputBusy(OutputError):
    """Another run is writing to the same output folder."""


# --------------------------------------------------------------------------------------------
# Checks before any work
# --------------------------------------------------------------------------------------------


def _check_writable(folder: Path, option: str, target: Path) -> None:
    # os.access tells a normal user the truth about modes but says yes to root on any folder, and
    # some file systems (read-only mounts, ACLs) only show on an attempt: ask, then try.
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {target}: cannot write there: {folder} is not writable (permission denied)")
    try:
        handle, probe = tempfile.mkstemp(prefix=".likeness-probe-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{option} {target}: cannot write there: {folder}: {exc.strerror or exc}") from exc


def check_output_folder(path: Path, option: str = "--out", named: Path | None = None) -> None:
    """Raise :class:`OutputError` unless ``path`` is a folder we can write in, or can be created.

    Args:
        option: how the user named it (``--out``), for the message.
        named: what the user gave, when ``path`` is the folder it goes in (``--json``'s folder).
    """
    path = Path(path)
    named = Path(named) if named is not None else path
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {named}: {path} is a file, not a folder" if named != path else f"{option} {path} is a file, not a folder")
    existing = path
    while not existing.exists():
        if os.path.lexists(existing):
            raise OutputError(f"{option} {named}: {existing} is a broken link")
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{option} {named}: {existing} is a file, not a folder")
    _check_writable(existing, option, named)
    previous = path / PREVIOUS
    if named == path and previous.is_dir():
        _check_writable(previous, option, named)


def check_output_file(path: Path, option: str = "--json") -> None:
    """Raise :class:`OutputError` unless ``path`` can be written (an earlier file there is kept aside)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; give a file name, e.g. {path / 'report.json'}")
    check_output_folder(path.parent if str(path.parent) else Path("."), option, named=path)


# --------------------------------------------------------------------------------------------
# Keeping what was there
# --------------------------------------------------------------------------------------------


def vacant_name(name_for: Callable[[str], Path], mtime: float) -> Path:
    """``name_for(tag)`` for the first tag ``<time>``, ``<time>-2``, … that does not exist yet."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(mtime))
    target, suffix = name_for(stamp), 1
    while target.exists():
        suffix += 1
        target = name_for(f"{stamp}-{suffix}")
    return target


def previous_folder(out_dir: Path, names: Sequence[str]) -> Path | None:
    """Where :func:`preserve_previous` would move the report files in ``out_dir`` (``None``: none there)."""
    existing = [out_dir / n for n in names if (out_dir / n).exists()]
    if not existing:
        return None
    return vacant_name(lambda tag: out_dir / PREVIOUS / tag, max(p.stat().st_mtime for p in existing))


def preserve_previous(out_dir: Path, names: Sequence[str], target: Path | None = None) -> Path | None:
    """Move the files and folders ``names`` already in ``out_dir`` to ``out_dir/previous/<their time>/``
    (or ``target``); returns where they went."""
    existing = [out_dir / n for n in names if (out_dir / n).exists()]
    if not existing:
        return None
    target = target or previous_folder(out_dir, names)
    target.mkdir(parents=True)
    for path in existing:
        shutil.move(str(path), str(target / path.name))
    return target


def preserve_file(path: Path) -> Path | None:
    """Rename an existing file to ``<stem>.<its time><suffix>`` so writing ``path`` loses nothing."""
    if not path.exists():
        return None
    target = vacant_name(lambda tag: path.with_name(f"{path.stem}.{tag}{path.suffix}"), path.stat().st_mtime)
    os.replace(path, target)
    return target


# --------------------------------------------------------------------------------------------
# One run at a time per folder
# --------------------------------------------------------------------------------------------


def _try_lock(handle: int) -> bool:
    if os.name == "nt":
        import msvcrt

        os.lseek(handle, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(handle, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        return False
    except OSError as exc:
        if exc.errno in _NO_LOCKING:  # a file system without locks (some network shares): run unlocked
            return True
        raise
    return True


def _unlock(handle: int) -> None:
    if os.name == "nt":
        import msvcrt

        os.lseek(handle, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(handle, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_UN)


def lock_holder(folder: Path) -> int | None:
    """The pid written in ``folder``'s lock file (whether or not it still holds the lock)."""
    try:
        return int((Path(folder) / LOCK_NAME).read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return None


class FolderLock:
    """An exclusive lock on a folder: ``<folder>/.likeness.lock`` locked by the operating system
    (``flock`` on POSIX, ``msvcrt.locking`` on Windows) and holding the holder's pid.

    The system drops the lock when its process ends, however it ends, so a lock file a killed run
    left behind is simply taken over; the pid is only there to name the holder.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._handle: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`OutputBusy` naming the run that has it (never waits)."""
        for _ in range(10):
            handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            if not _try_lock(handle):
                os.close(handle)
                holder = lock_holder(self.folder)
                who = f"pid {holder}" if holder is not None else "pid unknown"
                raise OutputBusy(f"another likeness run ({who}) is writing to {self.folder}; wait for it to finish or choose another output folder")
            # The holder before us deletes the file as it lets go: if we locked a deleted file, retry on the new one.
            try:
                same = os.name == "nt" or os.path.samestat(os.fstat(handle), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                os.lseek(handle, 0, os.SEEK_SET)
                os.ftruncate(handle, 0)
                os.write(handle, f"{os.getpid()}\n".encode("ascii"))
                self._handle = handle
                return
            _unlock(handle)
            os.close(handle)
        raise OutputBusy(f"could not lock {self.folder}: other runs keep taking and dropping it")

    def release(self) -> None:
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        try:
            if os.name == "nt":  # an open file cannot be deleted there: leave it empty for the next run
                os.ftruncate(handle, 0)
            else:  # deleted while still locked, so no one can lock the old file after us (see acquire)
                self.path.unlink(missing_ok=True)
            try:
                _unlock(handle)
            except OSError:  # never locked (a file system without locks): closing is all there is
                pass
        finally:
            os.close(handle)

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C back while a short, must-finish step runs (the swap: a few renames), then deliver it.

    Signal handlers belong to the main thread; elsewhere (a host's worker thread) this changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    try:
        before = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except (ValueError, OSError):  # no signal handling here (embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before if before is not None else signal.default_int_handler)
        if received:
            if before is signal.default_int_handler or before is None:
                raise KeyboardInterrupt
            if callable(before):
                before(signal.SIGINT, None)


# --------------------------------------------------------------------------------------------
# Report folders
# --------------------------------------------------------------------------------------------


class ReportFolder:
    """A report folder written as a whole or not at all, by one run at a time (see the module docstring).

    Args:
        folder: the output folder (created when missing).
        names: the report's file names: these are what an earlier report consists of, and what
            moves to ``previous/<time>/`` when the new one comes in.
        option: how the user named ``folder``, for messages (``--out``).

    Raises (on entering):
        OutputError: the folder cannot be written (it is a file, or a folder above it is not writable).
        OutputBusy: another run holds it.
    """

    def __init__(self, folder: Path, names: Sequence[str], option: str = "--out") -> None:
        self.folder = Path(folder)
        self.names = tuple(names)
        self.option = option
        self._lock = FolderLock(self.folder)
        self._staging: Path | None = None
        self._created: list[Path] = []
        self._previous: Path | None = None
        self._previous_known = False
        self.committed = False

    def __enter__(self) -> ReportFolder:
        check_output_folder(self.folder, self.option)
        missing = self.folder
        while not missing.exists():
            self._created.append(missing)
            missing = missing.parent
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{self.option} {self.folder}: cannot create it ({exc.strerror or exc})") from exc
        try:
            self._lock.acquire()
        except OSError as exc:
            self._remove_created()
            raise OutputError(f"{self.option} {self.folder}: cannot lock it ({exc.strerror or exc})") from exc
        except OutputBusy:
            self._remove_created()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._staging is not None:
                shutil.rmtree(self._staging, ignore_errors=True)
                self._staging = None
        finally:
            self._lock.release()
            if not self.committed:
                self._remove_created()

    def _remove_created(self) -> None:
        """Folders this run made and left empty go again (a failed first run leaves nothing behind)."""
        for folder in self._created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break

    @property
    def staging(self) -> Path:
        """The hidden folder the new report is written into; made on first use."""
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.folder))
        return self._staging

    def path(self, name: str) -> Path:
        """Where to write the report file ``name`` now (staged until :meth:`commit`)."""
        if name not in self.names:  # a file outside the report would overwrite the user's on commit
            raise ValueError(f"{name} is not one of this report's files ({', '.join(self.names)})")
        return self.staging / name

    def final(self, name: str) -> Path:
        """Where ``name`` will be once committed."""
        return self.folder / name

    @property
    def previous(self) -> Path | None:
        """Where the earlier report will go on :meth:`commit` (``None``: there is none). Known before
        the commit, so that the new report can say it; the lock keeps it true until then."""
        if not self._previous_known:
            self._previous = previous_folder(self.folder, self.names)
            self._previous_known = True
        return self._previous

    def commit(self) -> dict[str, Path]:
        """Move the earlier report to ``previous/<time>/`` and the staged files into the folder.

        Ctrl-C is held back until both are done. Returns ``{file name: final path}`` of the new files.
        """
        staged = sorted(p.name for p in self.staging.iterdir())
        with interrupts_deferred():
            preserve_previous(self.folder, self.names, target=self.previous)
            for name in staged:
                os.replace(self.staging / name, self.folder / name)
            self.committed = True
        shutil.rmtree(self.staging, ignore_errors=True)
        self._staging = None
        return {name: self.folder / name for name in staged}
