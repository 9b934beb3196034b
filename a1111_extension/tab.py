"""The "Likeness" tab: one container, one function per section.

Sections are built in :data:`SECTIONS` order, each in its own sub-tab; later stages add theirs
with :func:`add_section` (e.g. ``add_section("Dataset", build_dataset_section)``) before A1111
builds the UI. The first section scores an existing folder of images against reference photos
with the core and shows the table, the plot and the contact sheet; "Dataset" and "Train"
(:mod:`.stages`) prepare a Kohya dataset and train a LoRA into A1111's Lora folder.

:func:`score_folder_action` holds the logic and needs neither gradio nor A1111, so it is tested
directly; the ``build_*`` functions only lay out gradio components (gradio 3.41, A1111 1.10).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lora_likeness import pipeline
from lora_likeness import report as core_report
from lora_likeness.cache import FaceCache
from lora_likeness.outputs import OutputError, ReportFolder

from .scorer import DEFAULT_PACK, LikenessSetupError, available_packs, get_scorer
from .stages import build_dataset_section, build_train_section

TAB_TITLE = "Likeness"
TAB_ID = "likeness"
SUMMARY_HEADERS = ["group", "n", "faces", "no-face", "mean", "median", "std", "min", "max", "top-3", "95% CI"]


@dataclass
class FolderScore:
    """What the "Score a folder" section shows."""

    rows: list[list[str]] = field(default_factory=list)
    plot: str | None = None
    contact_sheet: str | None = None
    message: str = ""
    files: dict[str, Path] = field(default_factory=dict)


def _number(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "–"


def _summary_rows(run: pipeline.ScoreRun) -> list[list[str]]:
    rows = []
    for g in run.groups:
        ci = f"{g.ci95[0]:.3f}–{g.ci95[1]:.3f}" if g.ci95 else "–"
        no_face = f"{g.no_face_rate:.0%}" if g.no_face_rate is not None else "–"
        rows.append([g.label, str(g.n_images), str(g.n_faces), no_face, *(_number(v) for v in (
            g.mean, g.median, g.std, g.min, g.max, g.top3_mean)), ci])
    baseline = core_report.baseline_row(run)
    if baseline is not None:
        rows.append(baseline)
    return rows


def default_out_dir(images: Path, outputs_root: Path | None) -> Path:
    """``<outputs>/likeness/<images folder name>-<time>`` (A1111's outputs folder when known)."""
    root = outputs_root if outputs_root is not None else images.parent
    return root / "likeness" / f"{images.name or 'images'}-{time.strftime('%Y%m%d-%H%M%S')}"


def score_folder_action(refs: str, images: str, pack: str = DEFAULT_PACK, aggregation: str = "max",
                        group_by: str = "folder", out_dir: str = "", outputs_root: Path | None = None) -> FolderScore:
    """Score every image under ``images`` against the photos in ``refs`` and write the core's report.
    With named folders in ``refs`` (``dad=/photos/dad; mum=/photos/mum``) every person is scored in
    every image (the people a file's prompt names are expected, else everyone) and the message holds
    the per-person table.

    Problems with the settings come back as ``message`` (the tab shows it) instead of raising.
    """
    images_path = Path((images or "").strip().strip('"')).expanduser()
    if not str(images or "").strip():
        return FolderScore(message="Set the folder of images to score.")
    if not images_path.exists():
        return FolderScore(message=f"The images folder {images_path} does not exist.")
    try:
        scorer = get_scorer(refs, pack, aggregation)
    except LikenessSetupError as error:
        return FolderScore(message=str(error))
    target = Path(out_dir.strip()).expanduser() if out_dir and out_dir.strip() else default_out_dir(images_path, outputs_root)
    settings = pipeline.ScoreSettings(aggregation=aggregation, group_by=group_by)
    try:  # checked and locked before the analysis, as the CLI does
        with ReportFolder(target, core_report.REPORT_FILES, "The report folder") as report:
            if scorer.people is not None:  # named folders: the scorer's people set, not its first folder alone
                run = pipeline.score_image_folder(scorer.engine, scorer.references, images_path, settings=settings, cache=FaceCache(),
                                                  exclude=core_report.own_outputs(target), people=scorer.people)
            else:
                run = pipeline.score_folder(scorer.engine, scorer.refs_folder, images_path, settings=settings, cache=FaceCache(),
                                            exclude=core_report.own_outputs(target))
            files = core_report.write_report_into(run, report)
    except OutputError as error:
        return FolderScore(message=str(error))
    lines = [f"Scored {len(run.images)} image(s) in {len(run.groups)} group(s) against {run.references.n} reference photo(s)"
             + (f" of {len(run.people.names)} people ({', '.join(run.people.names)})." if run.people is not None else "."),
             core_report.baseline_sentence(run)]
    if run.people is not None:
        lines += [core_report.people_table_text(run), core_report.people_sentence(run)]
    lines.append(f"Report: {target}")
    if run.verdict is not None:  # grouped by step or LoRA: which checkpoint or step to use
        lines += [line[0].upper() + line[1:] for line in run.verdict.lines()]
    lines += [f"Warning: {w}" for w in run.warnings]
    return FolderScore(
        rows=_summary_rows(run),
        plot=str(files["scores.png"]) if "scores.png" in files else None,
        contact_sheet=str(files["contact_sheet.png"]) if "contact_sheet.png" in files else None,
        message="\n\n".join(lines),
        files=files,
    )


# --- gradio layout --------------------------------------------------------------------------------


def _outputs_root() -> Path | None:
    try:
        from modules import paths

        return Path(paths.data_path) / "outputs"
    except Exception:  # noqa: BLE001 - outside A1111 the report goes beside the images folder
        return None


def build_score_section() -> None:
    """Reference folder + images folder -> summary table, plot, contact sheet."""
    import gradio as gr

    packs = available_packs()
    with gr.Row():
        refs = gr.Textbox(label="Reference folder (real photos of the person)", elem_id="likeness_tab_refs")
        images = gr.Textbox(label="Images to score (a folder; sub-folders become groups; a trainer's samples folder: group by step)",
                            elem_id="likeness_tab_images")
    with gr.Row():
        pack = gr.Dropdown(label="Face pack", choices=packs or [DEFAULT_PACK], value=DEFAULT_PACK if DEFAULT_PACK in packs or not packs else packs[0],
                           allow_custom_value=True, elem_id="likeness_tab_pack")
        aggregation = gr.Radio(label="Aggregation", choices=["max", "mean", "ism"], value="max", elem_id="likeness_tab_aggregation")
        group_by = gr.Radio(label="Group by", choices=list(pipeline.GROUP_BY), value="folder", elem_id="likeness_tab_group_by")
        out_dir = gr.Textbox(label="Report folder (empty: outputs/likeness/<folder>-<time>)", elem_id="likeness_tab_out")
    run_button = gr.Button("Score", variant="primary", elem_id="likeness_tab_score")
    message = gr.Markdown()
    table = gr.Dataframe(headers=SUMMARY_HEADERS, interactive=False, wrap=True)
    with gr.Row():
        plot = gr.Image(label="Scores per group", type="filepath", interactive=False)
        sheet = gr.Image(label="Contact sheet", type="filepath", interactive=False)

    def on_score(refs_text, images_text, pack_text, aggregation_text, group_by_text, out_text):
        result = score_folder_action(refs_text, images_text, pack_text, aggregation_text, group_by_text, out_text,
                                     outputs_root=_outputs_root())
        return result.message, result.rows or [["" for _ in SUMMARY_HEADERS]], result.plot, result.contact_sheet

    run_button.click(on_score, inputs=[refs, images, pack, aggregation, group_by, out_dir], outputs=[message, table, plot, sheet])


#: (sub-tab title, builder) in display order; see :func:`add_section`.
SECTIONS: list[tuple[str, Callable[[], None]]] = [
    ("Score a folder", build_score_section),
    ("Dataset", build_dataset_section),  # stages.py: photos -> Kohya dataset
    ("Train", build_train_section),  # stages.py: dataset -> LoRA in A1111's Lora folder
]


def add_section(title: str, build: Callable[[], None]) -> None:
    """Add a sub-tab (replacing one of the same title) built by ``build()`` inside a gradio context."""
    for index, (existing, _) in enumerate(SECTIONS):
        if existing == title:
            SECTIONS[index] = (title, build)
            return
    SECTIONS.append((title, build))


def build_tab():
    """The ``on_ui_tabs`` callback: ``[(blocks, title, elem_id)]``."""
    import gradio as gr

    with gr.Blocks(analytics_enabled=False) as blocks, gr.Tabs(elem_id="likeness_tabs"):
        for title, build in SECTIONS:
            with gr.Tab(title):
                build()
    return [(blocks, TAB_TITLE, TAB_ID)]
