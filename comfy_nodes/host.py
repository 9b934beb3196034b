"""The one module of the node pack that talks to ComfyUI.

Everything host-specific the nodes need goes through here: the V3 node API (``io``, ``ui``,
``ComfyExtension``), model folders (``folder_paths``), the output folder, the progress bar and the
stop button. Node modules import ``io``/``ui`` from here and never import ComfyUI themselves.

Inside ComfyUI the real ``comfy_api.latest`` is used; it first appeared in ComfyUI 0.3.48 (the V3
node schema and ``comfy_entrypoint``), so an older ComfyUI gets an ImportError that says so, which
ComfyUI prints beside "IMPORT FAILED". Only where ComfyUI is absent altogether (unit tests, a plain
``pip install``) do the nodes run on :mod:`comfy_nodes.standin`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from lora_likeness.progress import Progress

log = logging.getLogger("lora_likeness.comfyui")

#: The oldest ComfyUI with everything the nodes use from ``comfy_api.latest`` (V3 schema, custom
#: io types, list outputs, UI previews) and with ``comfy_entrypoint`` loading in ``nodes.py``.
MIN_COMFYUI = "0.3.48"
INSIGHTFACE_FOLDER = "insightface"


def comfyui_present() -> bool:
    """Whether this process runs inside ComfyUI, or at least can import ComfyUI's packages.

    ComfyUI imports ``folder_paths`` long before it loads custom nodes; ``comfy_api`` is findable
    whenever ComfyUI's folder is on ``sys.path``.
    """
    return "folder_paths" in sys.modules or importlib.util.find_spec("comfy_api") is not None


def comfyui_version() -> str:
    try:
        import comfyui_version

        return str(comfyui_version.__version__)
    except Exception:  # noqa: BLE001 - a fork without the version file
        return "unknown"


IN_COMFYUI = comfyui_present()

if IN_COMFYUI:
    try:
        from comfy_api.latest import ComfyExtension, io, ui

        # Everything the nodes rely on; a partial API fails here with the message below.
        for _module, _needed in ((io, ("ComfyNode", "Schema", "NodeOutput", "Custom", "Image", "Combo", "Model", "Clip", "Vae")),
                                 (ui, ("PreviewImage",))):
            for _name in _needed:
                getattr(_module, _name)
    except (ImportError, AttributeError) as exc:
        missing_api = isinstance(exc, AttributeError) or getattr(exc, "name", None) in ("comfy_api.latest", "comfy_api")
        if not missing_api:  # the API is there but failed to import (a dependency of ComfyUI's own)
            raise ImportError(f"Likeness could not import ComfyUI's node API (comfy_api.latest): {exc}") from exc
        raise ImportError(
            f"Likeness needs ComfyUI {MIN_COMFYUI} or newer (its V3 node API, comfy_api.latest); this ComfyUI "
            f"is {comfyui_version()}. Update ComfyUI (git pull, or ComfyUI-Manager's 'Update ComfyUI'). ({exc})"
        ) from exc
else:
    from .standin import ComfyExtension, io, ui  # noqa: F401 - re-exported for the node modules


# --------------------------------------------------------------------------------------------
# Progress and the stop button
# --------------------------------------------------------------------------------------------


def check_interrupted() -> None:
    """Raise ComfyUI's own interruption exception when the user pressed Stop / Cancel.

    ComfyUI treats it as a cancelled run (no error dialog), unlike any other exception.
    """
    if IN_COMFYUI:
        import comfy.model_management

        comfy.model_management.throw_exception_if_processing_interrupted()


class HostProgress(Progress):
    """Core progress drawn as the node's progress bar, stopping when ComfyUI's Stop is pressed.

    ``steps_per_item`` subdivides each item (a sampled image has ``steps`` sampler steps), so the bar
    moves within an item too; :meth:`step` reports those.
    """

    def __init__(self, steps_per_item: int = 1) -> None:
        super().__init__()
        self.steps_per_item = max(1, int(steps_per_item))
        self._bar = None

    def start(self, total: int, description: str = "") -> None:
        super().start(total, description)
        if IN_COMFYUI:
            import comfy.utils

            self._bar = comfy.utils.ProgressBar(max(1, self.total * self.steps_per_item))

    def _draw(self, value: int, preview=None) -> None:
        if self._bar is not None:
            # ComfyUI's progress hook also raises InterruptProcessingException after Stop.
            self._bar.update_absolute(value, preview=preview)

    def advance(self, count: int = 1, detail: str | None = None) -> None:
        super().advance(count, detail)
        self._draw(self.done * self.steps_per_item)

    def step(self, step: int, preview=None) -> None:
        """Within the current item: ``step`` of ``steps_per_item`` done (0-based index of the last done)."""
        self._draw(self.done * self.steps_per_item + min(step + 1, self.steps_per_item), preview)

    def check(self) -> None:
        super().check()
        check_interrupted()


def take_interruption() -> bool:
    """Whether Stop / Cancel was pressed; clears ComfyUI's flag (the caller now owns the stop)."""
    if not IN_COMFYUI:
        return False
    import comfy.model_management

    try:
        comfy.model_management.throw_exception_if_processing_interrupted()
    except comfy.model_management.InterruptProcessingException:
        return True
    return False


class CoreCancelProgress(HostProgress):
    """:class:`HostProgress` whose Stop becomes the core's own cancellation (:class:`Cancelled`).

    For core jobs that save their state when cancelled (training): ComfyUI's interruption exception
    would pass straight through them, so here Stop only sets the core's flag and the core's
    ``check()`` raises :class:`~lora_likeness.progress.Cancelled` at its next safe point.
    """

    def _draw(self, value: int, preview=None) -> None:
        if self._bar is None:
            return
        import comfy.model_management

        try:
            self._bar.update_absolute(value, preview=preview)
        except comfy.model_management.InterruptProcessingException:  # raised by ComfyUI's progress hook
            self.cancel()

    def check(self) -> None:
        if take_interruption():
            self.cancel()
        Progress.check(self)


def free_models() -> None:
    """Unload every model ComfyUI holds and empty the GPU cache (before training needs the memory)."""
    if IN_COMFYUI:
        import comfy.model_management

        comfy.model_management.unload_all_models()
        comfy.model_management.soft_empty_cache()


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------


def register_face_model_folders() -> list[Path]:
    """Make ``models/insightface`` a ComfyUI model folder and tell the core where packs live.

    ComfyUI knows no ``insightface`` folder type by itself; registering it (as other face node
    packs do) lets ``extra_model_paths.yaml`` add folders with an ``insightface:`` line. Each such
    folder is searched for packs both as ``<folder>/models/<pack>`` (insightface's own layout, used
    by ReActor, IPAdapter FaceID, InstantID) and ``<folder>/<pack>``.

    Returns the folders searched, in order. Called at load and again whenever packs are listed,
    so folders added later are seen too.
    """
    if not IN_COMFYUI:
        return []
    import folder_paths
    from lora_likeness import faces

    folder_paths.add_model_folder_path(INSIGHTFACE_FOLDER, os.path.join(folder_paths.models_dir, INSIGHTFACE_FOLDER))
    searched: list[Path] = []
    for root in folder_paths.get_folder_paths(INSIGHTFACE_FOLDER):
        for folder in (Path(root) / "models", Path(root)):
            faces.register_models_dir(folder, f"ComfyUI models folder ({INSIGHTFACE_FOLDER})")
            searched.append(folder)
    return searched


def installed_packs() -> list[str]:
    """Names of the face-model packs in the searched folders: sub-folders holding ``.onnx`` files."""
    from lora_likeness import faces

    register_face_model_folders()
    names: list[str] = []
    for _label, root in faces.pack_search_dirs():
        try:
            children = sorted(p for p in Path(root).iterdir() if p.is_dir())
        except OSError:
            continue
        for child in children:
            if child.name == "models" or child.name in names:
                continue
            try:
                has_onnx = any(f.suffix.lower() == ".onnx" for f in child.iterdir())
            except OSError:
                has_onnx = False
            if has_onnx:
                names.append(child.name)
    return names


def lora_roots() -> list[Path]:
    """ComfyUI's ``loras`` folders (``extra_model_paths.yaml`` included), in ComfyUI's order."""
    if not IN_COMFYUI:
        return []
    import folder_paths

    return [Path(p) for p in folder_paths.get_folder_paths("loras")]


def checkpoint_names() -> list[str]:
    """The files of ComfyUI's ``checkpoints`` folders, as its Load Checkpoint node lists them."""
    if not IN_COMFYUI:
        return []
    import folder_paths

    return list(folder_paths.get_filename_list("checkpoints"))


def checkpoint_path(name: str) -> Path:
    """Full path of a ``checkpoints`` entry; outside ComfyUI ``name`` is taken as a path."""
    if not IN_COMFYUI:
        return Path(name).expanduser()
    import folder_paths

    found = folder_paths.get_full_path("checkpoints", name)
    if not found:
        raise FileNotFoundError(f"checkpoint {name!r} is not in ComfyUI's checkpoints folders")
    return Path(found)


def sd1_tokenizer_dir() -> Path | None:
    """ComfyUI's bundled SD1 CLIP tokenizer (``comfy/sd1_tokenizer``); None outside ComfyUI."""
    if not IN_COMFYUI:
        return None
    import comfy

    # ``comfy`` is a namespace package in some ComfyUI versions (no __init__.py, __file__ is None).
    folder = Path(next(iter(comfy.__path__))).resolve() / "sd1_tokenizer"
    return folder if folder.is_dir() else None


def output_directory() -> Path:
    """ComfyUI's output folder (``--output-directory`` honoured); ``./output`` outside ComfyUI."""
    if IN_COMFYUI:
        import folder_paths

        return Path(folder_paths.get_output_directory())
    return Path("output").resolve()


def input_directory() -> Path | None:
    """ComfyUI's input folder (``--input-directory`` honoured); ``None`` outside ComfyUI."""
    if IN_COMFYUI:
        import folder_paths

        return Path(folder_paths.get_input_directory())
    return None


def resolve_folder(text: str) -> Path:
    """A folder typed into a node: an absolute (or ``~``) path as it is; a relative one in ComfyUI's
    input folder when it is there (``generated`` is ``ComfyUI/input/generated``), else as given."""
    path = Path((text or "").strip().strip('"')).expanduser()
    if path.is_absolute():
        return path
    inputs = input_directory()
    if inputs is not None and (inputs / path).exists():
        return inputs / path
    return path


def new_output_folder(prefix: str) -> tuple[Path, str]:
    """A new, numbered folder under the output folder for one run's files: ``likeness/report_00003``.

    ``prefix`` is a ComfyUI-style filename prefix (``likeness/report``; sub-folders allowed, no
    ``..``). Returns the folder and its path relative to the output folder (what ``/view`` takes
    as ``subfolder``). Numbers only grow, so an earlier run's report is never touched.
    """
    root = output_directory().resolve()
    text = (prefix or "likeness/report").strip().replace("\\", "/").strip("/") or "likeness/report"
    parent_text, _, stem = text.rpartition("/")
    parent = (root / parent_text).resolve() if parent_text else root
    if parent != root and root not in parent.parents:
        raise ValueError(f"filename_prefix {prefix!r} points outside ComfyUI's output folder {root}")
    stem = stem or "report"
    parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^{re.escape(stem)}_(\d+)$")
    taken = [int(m.group(1)) for p in parent.iterdir() if (m := pattern.match(p.name))]
    number = max(taken, default=0) + 1
    while True:
        folder = parent / f"{stem}_{number:05d}"
        try:
            folder.mkdir()
            break
        except FileExistsError:  # another run took it in the meantime
            number += 1
    return folder, folder.relative_to(root).as_posix()


# --------------------------------------------------------------------------------------------
# What a node shows in the UI
# --------------------------------------------------------------------------------------------


def preview_images(images, node_cls=None):
    """UI preview of an IMAGE batch on the node (saved to ComfyUI's temp folder)."""
    return ui.PreviewImage(images, cls=node_cls)


def output_files_ui(files: Sequence[Path], subfolder: str) -> dict:
    """UI entry showing image files that were written into the output folder."""
    return {"images": [{"filename": Path(f).name, "subfolder": subfolder, "type": "output"} for f in files]}
