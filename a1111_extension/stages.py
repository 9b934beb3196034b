"""The "Dataset" and "Train" sections of the Likeness tab.

:func:`prepare_dataset_action` and :func:`train_lora_action` hold the logic and need neither gradio
nor A1111 (tested directly); they call the core's ``prepare_dataset`` / ``train_lora`` and turn the
result into a Markdown summary plus images. :class:`A1111Progress` draws the core's progress in
A1111's ``shared.state`` and turns A1111's Interrupt into :class:`~lora_likeness.progress.Cancelled`.
The ``build_*`` functions only lay out gradio components (gradio 3.41, A1111 1.10).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lora_likeness.progress import Cancelled, Progress

from .scorer import DEFAULT_PACK, LikenessSetupError, available_packs, load_engine

GALLERY_SIZE = 8


class A1111Progress(Progress):
    """The core's progress in A1111's ``shared.state`` (the progress bar and its text); ``check()``
    raises :class:`Cancelled` once the user pressed Interrupt (``state.interrupted``).

    ``state`` defaults to ``modules.shared.state``; tests pass any object with those attributes.
    """

    def __init__(self, state=None) -> None:
        super().__init__()
        if state is None:
            from modules import shared

            state = shared.state
        self.state = state

    def _set(self, **values) -> None:
        for name, value in values.items():
            with contextlib.suppress(Exception):  # a drawing problem must never stop the work
                setattr(self.state, name, value)

    def start(self, total: int, description: str = "") -> None:
        super().start(total, description)
        self._set(sampling_steps=self.total, sampling_step=0, textinfo=f"Likeness: {description}")

    def advance(self, count: int = 1, detail: str | None = None) -> None:
        super().advance(count, detail)
        text = f"Likeness: {self.description} {self.done}/{self.total}" + (f" ({detail})" if detail else "")
        self._set(sampling_step=self.done, textinfo=text)

    def cancelled(self) -> bool:
        if getattr(self.state, "interrupted", False):
            self.cancel()
        return super().cancelled()


def _path(text: str | None) -> Path | None:
    text = (text or "").strip().strip('"')
    return Path(text).expanduser() if text else None


# --- Dataset ---------------------------------------------------------------------------------------


@dataclass
class DatasetOutcome:
    """What the "Dataset" section shows."""

    message: str
    gallery: list[str] = field(default_factory=list)
    out: Path | None = None
    result: object | None = None  # the core's PrepareResult


def default_dataset_dir(trigger: str, outputs_root: Path | None, photos: Path) -> Path:
    """``<outputs>/likeness/datasets/<trigger>`` (beside the photos folder outside A1111)."""
    root = outputs_root if outputs_root is not None else photos.parent
    return root / "likeness" / "datasets" / (trigger or "dataset")


def prepare_dataset_action(photos: str, trigger: str, class_word: str = "person", out_dir: str = "", size: int = 1024,
                           max_images: int = 50, target_steps: int = 200, subject_refs: str = "", pack: str = DEFAULT_PACK,
                           outputs_root: Path | None = None, progress: Progress | None = None) -> DatasetOutcome:
    """Turn a folder of photos into a Kohya dataset with the core; problems come back as ``message``."""
    from lora_likeness.dataset import PrepareConfig, PrepareConfigError, prepare_dataset

    photos_path = _path(photos)
    if photos_path is None:
        return DatasetOutcome("Set the folder of photos of the person.")
    trigger = (trigger or "").strip()
    out = _path(out_dir) or default_dataset_dir(trigger, outputs_root, photos_path)
    try:
        config = PrepareConfig(photos=photos_path, out=out, trigger=trigger, class_word=(class_word or "").strip(),
                               size=int(size), max_images=int(max_images), target_steps=int(target_steps),
                               subject_refs=_path(subject_refs))
        config.validate()  # before loading the face models: a typo should not cost their load time
        engine = load_engine(pack)
        result = prepare_dataset(engine, config, progress or Progress())
    except (PrepareConfigError, LikenessSetupError) as error:
        return DatasetOutcome(str(error))
    except Cancelled as error:
        return DatasetOutcome(f"Cancelled ({error}). Faces found so far are cached; running again is faster.")
    counts = result.counts()
    lines = [f"**Kept {len(result.kept)}** of {result.n_photos} photo(s); rejected {len(result.rejected)}."]
    if counts:
        lines.append("Rejected: " + ", ".join(f"{code} {n}" for code, n in sorted(counts.items(), key=lambda kv: -kv[1])))
    lines.append(f"Repeats {result.repeats}, {result.steps_per_epoch} step(s) per epoch.")
    if result.unchanged:
        lines.append("The output already held exactly this dataset; nothing was rewritten.")
    if result.previous is not None:
        lines.append(f"The earlier output was moved to {result.previous}.")
    lines += [f"Warning: {w}" for w in result.warnings]
    report = result.files.get("report.html")
    lines.append(f"Dataset: {result.out}" + (f" (report: {report})" if report else ""))
    gallery = [str(result.out / k.output) for k in result.kept[:GALLERY_SIZE]]
    return DatasetOutcome("\n\n".join(lines), gallery, result.out, result)


# --- Train -----------------------------------------------------------------------------------------


@dataclass
class TrainOutcome:
    """What the "Train" section shows."""

    message: str
    loss_plot: str | None = None
    out: Path | None = None
    result: object | None = None  # the core's TrainResult


def checkpoint_choices() -> list[str]:
    """A1111's checkpoint titles (for the base dropdown); empty outside A1111."""
    try:
        from modules import sd_models

        return list(sd_models.checkpoint_tiles())
    except Exception:  # noqa: BLE001 - outside A1111 (or before its checkpoints are listed)
        return []


def resolve_checkpoint(choice: str) -> Path | None:
    """A dropdown title (``name.safetensors [hash]``) -> its file via ``checkpoints_list``; else a path."""
    choice = (choice or "").strip()
    if not choice:
        return None
    info = None
    with contextlib.suppress(Exception):  # outside A1111: a path typed in
        from modules import sd_models

        info = sd_models.checkpoints_list.get(choice) or sd_models.get_closet_checkpoint_match(choice)
    return Path(info.filename) if info is not None else _path(choice)


def free_a1111_vram() -> str:
    """Unload A1111's loaded checkpoint from VRAM (training needs the memory); says what happened."""
    try:
        from modules import sd_models
    except Exception:  # noqa: BLE001
        return "A1111's model was left loaded (modules.sd_models is not importable)."
    try:
        sd_models.unload_model_weights()
    except Exception as error:  # noqa: BLE001 - e.g. Forge without this function: train anyway
        return f"Could not unload A1111's model ({error}); training with it loaded."
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return "Unloaded A1111's checkpoint from VRAM (it loads again on the next generation)."


AUTO_RESOLUTION = "auto"
"""The Train section's resolution choice for "the base model family's default"."""


def resolution_choices() -> list[str]:
    return [AUTO_RESOLUTION, "512", "768", "1024"]


def resolution_label() -> str:
    """``Resolution (auto: 512 px for SD1.x, 1024 px for SDXL)``, from the registered families."""
    from lora_likeness.families import FAMILIES

    defaults = ", ".join(f"{family.defaults.resolution} px for {family.title}" for family in FAMILIES.values())
    return f"Resolution (auto: {defaults})"


def _resolution(value) -> int | None:
    """The chosen training resolution in px; ``None`` for ``auto`` (the family's default)."""
    text = str(value if value is not None else "").strip().lower()
    return None if text in ("", AUTO_RESOLUTION, "0", "none") else int(float(text))


def train_lora_action(base: str, data: str, name: str, epochs: int = 10, save_every: int = 1, rank: int = 16,
                      alpha: float = 16.0, lr: float = 1e-4, resolution: int | str | None = AUTO_RESOLUTION, seed: int = 42,
                      resume: bool = False, lora_root: Path | None = None, progress: Progress | None = None,
                      free_vram: Callable[[], str] | None = None, extra: dict | None = None) -> TrainOutcome:
    """Train a LoRA with the core into ``<lora_root>/<name>/``; problems come back as ``message``.

    ``base`` is a single-file ``.safetensors`` checkpoint (A1111's dropdown gives its path) or a
    diffusers folder of any family the core supports (SD1.x, SDXL: detected from the file, before
    anything is loaded); ``.ckpt`` is refused (it would need unpickling). ``resolution``: pixels, or
    ``auto`` for the family's default (512 SD1.x, 1024 SDXL) with its bucket limits. ``free_vram`` runs
    before training (A1111: unload its model). ``extra``: further :class:`TrainConfig` fields (tests:
    device, buckets).
    """
    from lora_likeness.families import ModelLoadError, detect_family
    from lora_likeness.training import ConfigError, TrainConfig, TrainingCancelled, train_lora

    base_path = _path(base)
    if base_path is None:
        return TrainOutcome("Choose the base checkpoint.")
    if not base_path.is_dir() and base_path.suffix.lower() != ".safetensors":
        return TrainOutcome(f"The base checkpoint must be a .safetensors file (not {base_path.name}): "
                            f".ckpt files would have to be unpickled.")
    if not base_path.exists():
        return TrainOutcome(f"The base checkpoint {base_path} does not exist.")
    data_path = _path(data)
    if data_path is None or not data_path.exists():
        return TrainOutcome(f"The dataset folder {data_path or '(empty)'} does not exist; prepare one in the Dataset section.")
    if lora_root is None:
        return TrainOutcome("A1111's Lora folder is unknown; training needs it for the output.")
    name = (name or "").strip()
    out = Path(lora_root) / name
    try:
        family = detect_family(base_path)  # from the file's header: an SD2 or inpainting model is refused here
        chosen = _resolution(resolution)
    except ModelLoadError as error:
        return TrainOutcome(f"Could not train: {error}")
    except ValueError:
        return TrainOutcome(f"Setting to fix: resolution must be a number of pixels or {AUTO_RESOLUTION!r} (got {resolution!r})")
    defaults = family.defaults
    settings = {"base": base_path, "data": data_path, "out": out, "name": name, "epochs": int(epochs),
                "save_every_n_epochs": int(save_every), "rank": int(rank), "alpha": float(alpha), "lr": float(lr),
                "resolution": chosen, "seed": int(seed), "family": family.name}
    if chosen is not None:  # the buckets must hold the chosen resolution; auto leaves the family's limits
        settings.update(min_bucket_reso=min(defaults.min_bucket_reso, chosen), max_bucket_reso=max(defaults.max_bucket_reso, chosen))
    settings.update(extra or {})
    try:
        config = TrainConfig(**settings)
        config.validate()
    except ConfigError as error:
        return TrainOutcome(f"Setting to fix: {error}")
    pixels = config.resolution or defaults.resolution
    notes = [free_vram()] if free_vram is not None else []
    notes.append(f"Base: {family.title} ({base_path.name}); training at {pixels} px"
                 + (" (the family's default)." if config.resolution is None else "."))
    try:
        result = train_lora(config, progress or Progress(), resume=bool(resume))
    except TrainingCancelled as error:
        notes.append(f"Training cancelled after {error.result.steps} step(s); the state was saved to "
                     f"{error.result.state}. Tick **Resume** and press Train to continue.")
        return TrainOutcome("\n\n".join(notes), out=out, result=error.result)
    except Cancelled as error:  # before the first step (loading, caching latents): nothing to resume
        return TrainOutcome("\n\n".join([*notes, f"Cancelled before training started ({error}); no state was saved."]))
    except (ConfigError, ModelLoadError) as error:
        return TrainOutcome("\n\n".join([*notes, f"Could not train: {error}"]))
    lines = [*notes, f"**Trained {result.epochs_done} epoch(s)**, {result.steps} step(s), into {result.out}."]
    if result.checkpoints:
        lines.append("Checkpoints: " + ", ".join(p.name for p in result.checkpoints))
    if result.final is not None:
        lines.append(f"Final LoRA: {result.final.name} (use it as <lora:{name}:1>; refresh the Lora tab)")
    if result.loss_csv is not None:
        lines.append(f"Loss log: {result.loss_csv}" + (f", plot: {result.loss_plot}" if result.loss_plot else ""))
    if result.stopped_early:
        lines.append("Stopped early: the identity score stopped improving.")
    lines += [f"Warning: {w}" for w in result.warnings]
    plot = str(result.loss_plot) if result.loss_plot and Path(result.loss_plot).is_file() else None
    return TrainOutcome("\n\n".join(lines), plot, out, result)


# --- gradio layout --------------------------------------------------------------------------------


def _a1111_run(job: str, work: Callable[[Progress], object]):
    """Run ``work`` as an A1111 job: ``shared.state.begin/end`` around it, progress drawn there."""
    from modules import shared

    shared.state.begin(job=job)
    try:
        return work(A1111Progress(shared.state))
    finally:
        shared.state.end()


def _interrupt() -> None:
    from modules import shared

    shared.state.interrupt()


def _lora_root() -> Path | None:
    try:
        from modules import shared

        return Path(shared.cmd_opts.lora_dir)
    except Exception:  # noqa: BLE001
        return None


def build_dataset_section() -> None:
    """Photos folder + trigger + class -> Kohya dataset, summary and a few crops."""
    import gradio as gr

    from .tab import _outputs_root

    packs = available_packs()
    with gr.Row():
        photos = gr.Textbox(label="Photos folder (real photos of the person)", elem_id="likeness_ds_photos")
        trigger = gr.Textbox(label="Trigger word (rare token, e.g. ohwx)", value="ohwx", elem_id="likeness_ds_trigger")
        class_word = gr.Textbox(label="Class word (man, woman, person…)", value="person", elem_id="likeness_ds_class")
    with gr.Row():
        out_dir = gr.Textbox(label="Output folder (empty: outputs/likeness/datasets/<trigger>)", elem_id="likeness_ds_out")
        subject = gr.Textbox(label="Subject reference photos (optional; default: the largest identity)", elem_id="likeness_ds_subject")
    with gr.Row():
        size = gr.Radio(label="Size", choices=[512, 768, 1024], value=1024, elem_id="likeness_ds_size")
        max_images = gr.Slider(label="Max images", minimum=1, maximum=200, step=1, value=50, elem_id="likeness_ds_max")
        target_steps = gr.Slider(label="Target steps per epoch", minimum=10, maximum=2000, step=10, value=200, elem_id="likeness_ds_steps")
        pack = gr.Dropdown(label="Face pack", choices=packs or [DEFAULT_PACK], value=DEFAULT_PACK if DEFAULT_PACK in packs or not packs else packs[0],
                           allow_custom_value=True, elem_id="likeness_ds_pack")
    with gr.Row():
        run_button = gr.Button("Prepare dataset", variant="primary", elem_id="likeness_ds_run")
        stop_button = gr.Button("Interrupt", elem_id="likeness_ds_stop")
    message = gr.Markdown()
    gallery = gr.Gallery(label="Kept crops (first few)", columns=4, height="auto")

    def on_prepare(*values):
        outcome = _a1111_run("Likeness: dataset", lambda progress: prepare_dataset_action(
            *values, outputs_root=_outputs_root(), progress=progress))
        return outcome.message, outcome.gallery

    run_button.click(on_prepare, inputs=[photos, trigger, class_word, out_dir, size, max_images, target_steps, subject, pack],
                     outputs=[message, gallery])
    stop_button.click(_interrupt)


def build_train_section() -> None:
    """Base checkpoint + dataset -> LoRA checkpoints in A1111's Lora folder, summary and loss plot."""
    import gradio as gr

    choices = checkpoint_choices()
    with gr.Row():
        base = gr.Dropdown(label="Base checkpoint (.safetensors: SD1.x or SDXL, detected from the file)", choices=choices,
                           value=choices[0] if choices else None,
                           allow_custom_value=True, elem_id="likeness_train_base")
        refresh = gr.Button("Refresh", elem_id="likeness_train_refresh")
        data = gr.Textbox(label="Dataset folder (from the Dataset section)", elem_id="likeness_train_data")
        name = gr.Textbox(label="LoRA name (folder in models/Lora)", value="likeness", elem_id="likeness_train_name")
    with gr.Row():
        epochs = gr.Number(label="Epochs", value=10, precision=0, elem_id="likeness_train_epochs")
        save_every = gr.Number(label="Save every N epochs", value=1, precision=0, elem_id="likeness_train_save_every")
        rank = gr.Number(label="Rank", value=16, precision=0, elem_id="likeness_train_rank")
        alpha = gr.Number(label="Alpha", value=16, elem_id="likeness_train_alpha")
        lr = gr.Number(label="Learning rate", value=1e-4, elem_id="likeness_train_lr")
        resolution = gr.Radio(label=resolution_label(), choices=resolution_choices(), value=AUTO_RESOLUTION,
                              elem_id="likeness_train_resolution")
        seed = gr.Number(label="Seed", value=42, precision=0, elem_id="likeness_train_seed")
        resume = gr.Checkbox(label="Resume", value=False, elem_id="likeness_train_resume")
    with gr.Row():
        run_button = gr.Button("Train", variant="primary", elem_id="likeness_train_run")
        stop_button = gr.Button("Interrupt (state is saved)", elem_id="likeness_train_stop")
    message = gr.Markdown()
    plot = gr.Image(label="Loss", type="filepath", interactive=False)

    def on_train(base_choice, *values):
        base_path = resolve_checkpoint(base_choice)
        outcome = _a1111_run("Likeness: train", lambda progress: train_lora_action(
            str(base_path or ""), *values, lora_root=_lora_root(), progress=progress, free_vram=free_a1111_vram))
        return outcome.message, outcome.loss_plot

    refresh.click(lambda: gr.update(choices=checkpoint_choices()), outputs=[base])
    run_button.click(on_train, inputs=[base, data, name, epochs, save_every, rank, alpha, lr, resolution, seed, resume],
                     outputs=[message, plot])
    stop_button.click(_interrupt)
