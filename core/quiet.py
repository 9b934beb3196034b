"""Keep the ``likeness`` command's terminal to its own progress and messages.

transformers, diffusers and huggingface_hub print warnings a Likeness user can do nothing about
("`CLIPImageProcessor` requires torchvision", "modules ... should be kept in float32") and their own
tqdm bars ("Loading weights", "Loading pipeline components...") between our progress bar and our
messages; onnxruntime and torch add a few Python warnings that our own messages already cover.
:func:`quiet_third_party` turns these down while a CLI command runs:

* the three libraries' loggers are set to ERROR (their real errors still print) and their progress
  bars are turned off: at once for a library already imported, else right after it is imported
  (they configure their loggers at import, so setting them earlier would be undone);
* the Python warnings in :data:`KNOWN_WARNINGS` are ignored.

Everything is restored when the command ends. Only the CLI calls it: inside ComfyUI or A1111 the host
owns these settings, and importing ``lora_likeness`` changes nothing. A user who sets a library's own
switch (``TRANSFORMERS_VERBOSITY``, ``DIFFUSERS_VERBOSITY``, ``HF_HUB_VERBOSITY``,
``HF_HUB_DISABLE_PROGRESS_BARS``) or passes ``-W`` / ``PYTHONWARNINGS`` keeps what they asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Libraries whose logging and progress bars are turned down, with the environment variables that
#: say the user chose their verbosity / progress bars themselves.
LIBRARIES = {
    "transformers": ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"),
    "diffusers": ("DIFFUSERS_VERBOSITY", None),
    "huggingface_hub": ("HF_HUB_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"),
}

#: ``(category, message regex)`` of Python warnings that are noise in our terminal.
KNOWN_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # onnxruntime, when --providers asks for a provider its build lacks: our own warning says so, in words.
    (UserWarning, r"Specified provider '.*' is not in available provider names"),
    # diffusers' deprecate(): its internal API moving, addressed to developers, not to users.
    (FutureWarning, r".*is deprecated and will be removed in version"),
    # huggingface_hub under older diffusers / transformers.
    (FutureWarning, r"`resume_download` is deprecated"),
    # transformers 4.3x on torch >= 2.2, and older libraries on torch 2.x.
    (UserWarning, r"torch\.utils\._pytree\._register_pytree_node is deprecated"),
    (UserWarning, r"TypedStorage is deprecated"),
)


def _quiet_library(name: str, imported_now: bool) -> Callable[[], None]:
    """Turn ``name``'s logger to ERROR and its progress bars off; returns what restores them.

    ``imported_now``: the library was imported inside :func:`quiet_third_party`. Its bars are then
    restored to on, as a plain import leaves them (transformers takes its first setting from
    huggingface_hub's, which was already turned off here)."""
    verbosity_variable, bars_variable = LIBRARIES[name]
    undo: list[Callable[[], None]] = []
    if not os.environ.get(verbosity_variable):
        logger = logging.getLogger(name)
        level = logger.level
        logger.setLevel(logging.ERROR)
        undo.append(lambda: logger.setLevel(level))
    if not (bars_variable and os.environ.get(bars_variable)):
        if name == "huggingface_hub":
            hub = importlib.import_module("huggingface_hub.utils")
            if imported_now or not hub.are_progress_bars_disabled():
                hub.disable_progress_bars()
                undo.append(hub.enable_progress_bars)
        else:  # transformers.utils.logging and diffusers.utils.logging share this API
            library_logging = importlib.import_module(f"{name}.utils.logging")
            if imported_now or library_logging.is_progress_bar_enabled():
                library_logging.disable_progress_bar()
                undo.append(library_logging.enable_progress_bar)

    def restore() -> None:
        for step in reversed(undo):
            step()

    return restore


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``on_import(name)`` right after one of ``names`` (top-level packages) is first imported."""

    def __init__(self, names: set[str], on_import: Callable[[str], None]) -> None:
        self.pending = set(names)
        self.on_import = on_import
        self.searching: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        # Not only imports ask: importlib.util.find_spec("transformers") (an "is it installed?" check)
        # comes here too, so a name stays pending until its module has actually run.
        if fullname not in self.pending or fullname in self.searching:
            return None
        self.searching.add(fullname)  # the search below must not come back here
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.searching.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _ThenCall(spec.loader, fullname, self._imported)
        return spec

    def _imported(self, name: str) -> None:
        self.pending.discard(name)
        self.on_import(name)


class _ThenCall(importlib.abc.Loader):
    """Runs the real loader (and gives the module back to it), then the callback."""

    def __init__(self, loader, name: str, on_import: Callable[[str], None]) -> None:
        self.loader, self.name, self.on_import = loader, name, on_import

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = self.loader  # the module, its resources and tracebacks see the real loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.on_import(self.name)


@contextmanager
def quiet_third_party() -> Iterator[None]:
    """Within the block, third-party logging, progress bars and known warnings stay off the terminal
    (see the module docstring); on leaving it, everything is as before."""
    restores: list[Callable[[], None]] = []

    def quiet(name: str, imported_now: bool = True) -> None:
        try:
            restores.append(_quiet_library(name, imported_now))
        except Exception:  # noqa: BLE001 - an unknown library version stays as loud as it was, never broken
            pass

    hook = _AfterImport({name for name in LIBRARIES if name not in sys.modules}, quiet)
    for name in LIBRARIES:
        if name in sys.modules:
            quiet(name, imported_now=False)
    sys.meta_path.insert(0, hook)
    try:
        with warnings.catch_warnings():
            if not sys.warnoptions:  # -W / PYTHONWARNINGS: the user's own choice wins
                for category, message in KNOWN_WARNINGS:
                    warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        if hook in sys.meta_path:
            sys.meta_path.remove(hook)
        for restore in reversed(restores):
            try:
                restore()
            except Exception:  # noqa: BLE001 - restoring must not hide the command's own outcome
                pass
