"""Scores in A1111's X/Y/Z plot: on every cell, in the axis labels, in the grid's infotext, and
as ``<grid>-likeness_scores.csv`` / ``.json`` next to the saved grid; when the grid sweeps a LoRA
(epochs and/or strengths), the core's recommendation under the grid image, in the comments shown
under the gallery, in the grid infotext and in the JSON report (see ``recommendation``).

Where it hooks in (A1111 1.10 ``scripts/xyz_grid.py``; lllyasviel's Forge keeps the same structure; Forge
Classic / Neo moved it to ``extensions-builtin/xyz/scripts/xyz_grid.py``, whose script class is ``XYZ`` and
which imports ``draw_xyz_grid`` from ``lib_xyz.main`` and ``process_images`` by name, so the same names of
the script module are wrapped there):

* Each cell runs ``process_images``; our always-on script scores every image there and leaves
  the cell's scores on the returned ``Processed`` (attribute ``likeness``).
* A cell whose ``process_images`` raises (A1111's NaN check, out of memory, a script's error) is
  caught by the X/Y/Z script, which shows a black cell and goes on. The module's ``process_images``
  name is wrapped to see that exception and the cell's processing object: the cell is reported as
  producing no image, with the reason, in the CSV/JSON, the warnings and the band under the grid,
  and its images count as missing (never as "no face"; the recommendation does not score it).
* ``draw_xyz_grid`` (module function, looked up by name when ``Script.run`` calls it) is wrapped.
  The wrapper runs the original once, generating every cell as usual; when the cells carry scores
  it runs the original a second time over the finished cells (no sampling: its ``cell`` callback
  returns the stored results) with the score drawn on each cell image and the axis labels
  carrying the row / column / sheet means, so A1111's own code lays out the scored grid. Lone
  images stay unannotated. The recommendation's headline and warnings are drawn on a band under
  the main grid image. With named reference folders (several people) each cell's badge names each
  person's score, the band lists every cell's per-person scores, and the recommendation is the core's
  worst-served one, the recommended cell's per-person scores in the grid infotext (``Likeness people``).
* ``Script.run`` is wrapped to put the grid mean into the grid infotexts it returns (it builds
  them from the first cell, before any mean is known) and the summary table into ``comments``,
  which the UI shows under the gallery.
* ``on_before_image_saved`` / ``on_image_saved`` callbacks put the grid mean into the saved grid
  file's infotext and write the reports next to it.
* Forge Neo keeps A1111's ``scripts/xyz_grid.py`` but its ``run`` (which takes a ``row_count``) may
  re-lay a one-axis main grid into several rows after ``draw_xyz_grid`` returned, slicing anything drawn
  under it, and saves that new image. There the band is drawn on the host's final main grid instead:
  when the save callback sees it (``p`` of the saved grid is the ``Processed`` our wrapper returned), or
  when ``run`` returns (``grid_save`` off).
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from copy import copy
from dataclasses import dataclass, field
from pathlib import Path

from lora_likeness import grid as core_grid
from lora_likeness import report as core_report
from lora_likeness.images import write_text_atomic
from lora_likeness.people import PeopleGroupStats, compact_people_text, people_group_statistics
from lora_likeness.people_sweep import PeopleRecommendation
from lora_likeness.recommend import Recommendation

from . import axes
from .recommendation import caption_below, recommend_grid, recommend_people_grid, recommendation_lines
from .scorer import ScoredImage, Scorer

INFOTEXT_KEY = "Likeness"
PEOPLE_INFOTEXT_KEY = "Likeness people"
"""Per-person scores of one image with named reference folders (``dad 0.612, mum -, blended``)."""
CELL_ATTRIBUTE = "likeness_cell"
"""Where our always-on script keeps a cell's :class:`CellScores` on its processing object."""
RECOMMENDATION_KEY = "Likeness recommendation"
DEFER_CAPTION_ATTRIBUTE = "likeness_defer_caption"
"""Set on ``p`` by the ``run`` wrapper where the host may re-lay the main grid after drawing it (Forge Neo)."""
PROCESSED_ATTRIBUTE = "likeness_grid_scores"
"""The :class:`GridScores` on the ``Processed`` our ``draw_xyz_grid`` wrapper returns."""
WRAPPED_MARK = "_likeness_original"
REPORT_SUFFIXES = ("-likeness_scores.csv", "-likeness_scores.json")


@dataclass
class CellScores:
    """The scores of one ``process_images`` call (one X/Y/Z cell, or one plain generation)."""

    scorer: Scorer
    images: list[ScoredImage] = field(default_factory=list)
    pil_images: list = field(default_factory=list)  # the scored PIL images, to find their saved files
    lora: dict = field(default_factory=dict)  # run / epoch / strength chosen by our LoRA axes
    prompt: str | None = None  # the cell's prompt, <lora:…> tags included (which LoRA the cell used)
    seeds: list[int | None] = field(default_factory=list)  # one per scored image
    failure: CellFailure | None = None
    """Set when the cell produced no image (its generation raised or never ran)."""

    @property
    def values(self) -> list[float | None]:
        return [image.value for image in self.images]

    @property
    def mean(self) -> float | None:
        return core_grid.mean_score(self.values)

    def people_stats(self) -> PeopleGroupStats | None:
        """With named reference folders: the core's per-person statistics over the cell's images."""
        people = getattr(self.scorer, "people", None)
        if people is None:
            return None
        found = [image.people for image in self.images if image.people is not None]
        return people_group_statistics(people, found, seed=self.scorer.settings.seed, n_boot=self.scorer.settings.n_boot)

    def people_note(self) -> str | None:
        """Each person's score on the cell's badge: ``obama .81 · jolie –`` (means over a batch)."""
        stats = self.people_stats()
        return compact_people_text(stats, rates=False) or None if stats is not None else None


@dataclass(frozen=True)
class CellFailure:
    """Why an X/Y/Z cell produced no image, and how many images it was to make."""

    reason: str
    """``NansException: A tensor with NaNs was produced in Unet. …`` (exception type and message), or what happened."""
    expected: int = 1
    """batch size × batch count of the cell: the images that are missing."""

    @property
    def short(self) -> str:
        """The reason up to the end of its first sentence (for the cell and the band under the grid)."""
        first = self.reason.splitlines()[0] if self.reason else ""
        head, dot, _ = first.partition(". ")
        return head + "." if dot else first


# --- infotext -------------------------------------------------------------------------------------


class InfotextField(str):
    """A value for ``p.extra_generation_params`` that the host calls for each infotext, and that is a
    string (empty) everywhere else.

    A1111 1.6+ and every Forge call a callable value there with ``create_infotext``'s locals. The same
    dict is then dumped by ``Processed.js()`` (the generation info the UI and the API return): A1111 1.10
    turns what JSON cannot encode into null, Forge Classic / Neo's ``json.dumps(obj)`` raises
    ``TypeError: Object of type function is not JSON serializable`` on a plain function, failing every
    generation. JSON encodes a ``str`` subclass as its text.
    """

    function: Callable[..., str | None]

    def __new__(cls, function: Callable[..., str | None]) -> InfotextField:
        field = super().__new__(cls, "")
        field.function = function
        return field

    def __call__(self, **kwargs) -> str | None:
        return self.function(**kwargs)


def _field_pattern(key: str) -> re.Pattern:
    return re.compile(rf'(?P<head>(?:^|, ){re.escape(key)}: )(?P<value>"(?:[^"\\]|\\.)*"|[^,\n]*)')


def infotext_with_field(text: str | None, key: str, value: str) -> str | None:
    """``text`` (an A1111 infotext) with ``key: value`` set on its parameter line, the value quoted
    as A1111's ``infotext_utils.quote`` does when it holds ``,`` ``:`` or a line break."""
    if text is None:
        return None
    if any(c in value for c in ',:\n"'):
        value = json.dumps(value, ensure_ascii=False)
    pattern = _field_pattern(key)
    if pattern.search(text):
        return pattern.sub(lambda m: m.group("head") + value, text, count=1)
    lines = text.split("\n")
    lines[-1] = f"{lines[-1]}, {key}: {value}" if lines[-1].strip() else f"{key}: {value}"
    return "\n".join(lines)


def infotext_with_score(text: str | None, score: float | None) -> str | None:
    """``text`` (an A1111 infotext) with ``Likeness: <score>`` set on its parameter line."""
    return infotext_with_field(text, INFOTEXT_KEY, core_grid.format_score(score))


def infotext_with_grid(text: str | None, scores: GridScores) -> str | None:
    """A grid's infotext: the grid mean, and the recommended cell when there is one."""
    text = infotext_with_score(text, scores.mean)
    people = scores.people_recommendation()
    if people is not None:
        if people.best is not None:  # the family's cell, and each person's score there (not the first cell's image)
            text = infotext_with_field(text, RECOMMENDATION_KEY, people.best.cell.label)
            text = infotext_with_field(text, PEOPLE_INFOTEXT_KEY, people_scores_text(people.best.stats))
        return text
    advice = scores.recommendation()
    if advice is not None and advice.best is not None:
        text = infotext_with_field(text, RECOMMENDATION_KEY, advice.best.label)
    return text


def people_scores_text(stats: PeopleGroupStats) -> str:
    """``obama 0.808 (100%), jolie 0.804 (50%), all present 50%, blended 0%``: a cell's people for an infotext."""
    parts = [f"{name} {core_grid.format_score(p.mean) if p.mean is not None else '-'} ({p.presence_rate:.0%})"
             for name, p in stats.people.items() if p.n_expected and p.presence_rate is not None]
    rates = [f"all present {stats.all_present_rate:.0%}" if stats.all_present_rate is not None else None,
             f"blended {stats.blend_rate:.0%}" if stats.blend_rate is not None else None]
    return ", ".join(parts + [r for r in rates if r])


# --- the scored grid --------------------------------------------------------------------------------


def cell_index(ix: int, iy: int, iz: int, nx: int, ny: int) -> int:
    """Position of a cell in ``draw_xyz_grid``'s flat cell list."""
    return ix + iy * nx + iz * nx * ny


@dataclass
class GridScores:
    """Scores of every cell of one X/Y/Z run and everything derived from them."""

    scorer: Scorer
    x_labels: list[str]
    y_labels: list[str]
    z_labels: list[str]
    cells: dict[tuple[int, int, int], CellScores]
    saved_grids: list[Path] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)
    grid_images: list = field(default_factory=list)
    advice_reason: str | None = None
    """Why a grid that sweeps LoRAs got no recommendation (``None``: it got one, or sweeps none)."""
    caption_pending: bool = False
    """The band is still to be drawn under the host's final main grid (Forge Neo, see the module docstring)."""
    _run: object = field(default=None, repr=False)
    _advice: tuple | None = field(default=None, repr=False)
    _people_advice: tuple | None = field(default=None, repr=False)

    @property
    def failed(self) -> dict[tuple[int, int, int], CellScores]:
        """The cells that produced no image, in grid order (z, y, x)."""
        return {key: cell for key, cell in sorted(self.cells.items(), key=lambda item: item[0][::-1]) if cell.failure is not None}

    def failure_lines(self) -> list[str]:
        """One sentence per cell without an image: which cell and why (the warnings and the band under the grid)."""
        return [f"{self.group_label(*key)}: no image ({cell.failure.short}); its {cell.failure.expected} image(s) count as missing, "
                f"not as 'no face'" for key, cell in self.failed.items()]

    def _keyed(self, axis: int) -> tuple[list[float | None], list[int]]:
        scores, keys = [], []
        for position, cell in self.cells.items():
            scores += cell.values
            keys += [position[axis]] * len(cell.values)
        return scores, keys

    def axis_means(self, axis: int) -> dict[int, float | None]:
        """Mean score per index along axis 0 (x), 1 (y) or 2 (z)."""
        return core_grid.axis_means(*self._keyed(axis))

    @property
    def mean(self) -> float | None:
        values = [v for cell in self.cells.values() for v in cell.values]
        return core_grid.mean_score(values)

    def labels_with_means(self, labels: Sequence[str], axis: int) -> list[str]:
        """``e10 · 0.612``; an empty label (the "Nothing" axis) stays empty."""
        means = self.axis_means(axis)
        return [core_grid.axis_label(label, means.get(i)) if label else label for i, label in enumerate(labels)]

    def group_label(self, ix: int, iy: int, iz: int) -> str:
        parts = [self.x_labels[ix], self.y_labels[iy], self.z_labels[iz]]
        return " | ".join(str(part) for part in parts if part) or "all"

    def run(self, saved_names: Callable[[object], str | None] | None = None):
        """The core's ScoreRun, one group per cell (its axis labels), images named by their saved
        file when A1111 saved them (computed once: the cells' files are saved before the grid)."""
        if self._run is not None:
            return self._run
        scored, groups = [], []
        for (ix, iy, iz), cell in sorted(self.cells.items(), key=lambda item: (item[0][2], item[0][1], item[0][0])):
            label = self.group_label(ix, iy, iz)
            info = {k2: v for k2, v in cell.lora.items() if v is not None}
            for k, (image, pil) in enumerate(zip(cell.images, cell.pil_images or [None] * len(cell.images))):
                name = saved_names(pil) if (saved_names and pil is not None) else None
                image.name = name or f"{label} #{k + 1}"
                scored.append(image)
                groups.append((label, info))
            if cell.failure is not None:  # one error row per image the cell was to make: missing, not "no face"
                for k in range(cell.failure.expected):
                    scored.append(self.scorer.missing_image(f"{label} #{k + 1} (no image)", f"no image: {cell.failure.reason}"))
                    groups.append((label, info))
        run = self.scorer.run(scored, groups)
        missing = sum(cell.failure.expected for cell in self.failed.values())
        if missing:  # the core words image errors as unreadable files; these images were never made
            unreadable = f"{missing} image(s) could not be read"
            run.warnings = [w for w in run.warnings if not w.startswith(unreadable)] + self.failure_lines()
        self._run = run
        return self._run

    def summary(self) -> str:
        return core_report.summary_table_text(self.run())

    def recommendation(self) -> Recommendation | None:
        """The core's recommendation over the cells, when the grid sweeps a LoRA (computed once)."""
        if self._advice is None:
            # A cell that never started has no prompt: which LoRA it was to use is unknown, so it stays out.
            cells = {position: cell for position, cell in self.cells.items() if cell.prompt is not None}
            prompts = {position: cell.prompt for position, cell in cells.items()}
            ceiling = self.scorer.baseline if self.scorer is not None else None
            try:
                advice, self.advice_reason = recommend_grid(cells, prompts, ceiling, axes.describe_checkpoints)
            except Exception as error:  # noqa: BLE001 - the grid and its scores stay; say what went wrong
                advice, self.advice_reason = None, f"the recommendation failed: {error!r}"
                print(f"[Likeness] {self.advice_reason}", file=sys.stderr, flush=True)
            self._advice = (advice,)
        return self._advice[0]

    def people_recommendation(self) -> PeopleRecommendation | None:
        """With named reference folders: the core's cell best for the worst-served person (computed once)."""
        people = getattr(self.scorer, "people", None)
        if people is None:
            return None
        if self._people_advice is None:
            cells = {position: cell for position, cell in self.cells.items() if cell.prompt is not None}
            prompts = {position: cell.prompt for position, cell in cells.items()}
            try:
                advice, reason = recommend_people_grid(cells, prompts, people, axes.describe_checkpoints,
                                                       seed=self.scorer.settings.seed, n_boot=self.scorer.settings.n_boot)
            except Exception as error:  # noqa: BLE001 - the grid and its scores stay; say what went wrong
                advice, reason = None, f"the recommendation failed: {error!r}"
                print(f"[Likeness] {reason}", file=sys.stderr, flush=True)
            self.advice_reason = self.advice_reason or reason
            self._people_advice = (advice,)
        return self._people_advice[0]

    def recommendation_text(self) -> list[str]:
        """Lines for the comments and the grid caption: headline and warnings, or why there is none;
        with several people, the family's answer (the worst-served rule) and its warnings."""
        advice = self.recommendation()
        people = self.people_recommendation() if advice is not None else None
        if people is not None:
            return people.lines(warning_prefix="Warning: ")
        if advice is not None:
            return recommendation_lines(advice)
        return [f"No recommendation: {self.advice_reason}"] if self.advice_reason else []

    def people_lines(self) -> list[str]:
        """With several people: one line per cell that has images, ``e1 | 0.8: obama .81 (100%) · jolie .83 (50%) · …``."""
        lines = []
        for key, cell in sorted(self.cells.items(), key=lambda item: item[0][::-1]):
            stats = cell.people_stats() if cell.failure is None else None
            if stats is not None and cell.images:
                lines.append(f"{self.group_label(*key)}: {compact_people_text(stats)}")
        return lines

    def caption(self) -> list[str]:
        """The band under the grid: the recommendation's lines, then each cell without an image."""
        return self.recommendation_text() + [f"Warning: {line}" for line in self.failure_lines()]

    def failed_cells(self) -> list[dict]:
        """The JSON report's ``failed_cells``: position, label, missing images and why, per cell without an image."""
        return [{"cell": self.group_label(*key), "x": key[0], "y": key[1], "z": key[2], "missing_images": cell.failure.expected,
                 "reason": cell.failure.reason} for key, cell in self.failed.items()]


def missing_cell(processed, failure: CellFailure, size: tuple[int, int]):
    """A shallow copy of a failed cell's empty ``Processed`` showing ``no image`` and why, where
    A1111 would draw a black cell (its infotext, prompt and seed stay what A1111 has for it)."""
    clone = copy(processed)
    clone.images = [core_grid.draw_no_image(size, failure.short)]
    clone.infotexts = list(getattr(processed, "infotexts", None) or [None])
    return clone


def badge_cell(processed, cell: CellScores | None, baseline: float | None, size: tuple[int, int] = (64, 64)):
    """A shallow copy of a cell's ``Processed`` whose first image (what the grid shows) carries
    the score: the face box and value for a single image, the cell mean for a batch grid; for a
    cell that produced no image, a placeholder of ``size`` saying so."""
    if cell is not None and cell.failure is not None:
        return missing_cell(processed, cell.failure, size)
    if cell is None or not processed.images:
        return processed
    clone = copy(processed)
    clone.images = list(processed.images)
    single = len(cell.images) == 1 and getattr(processed, "index_of_first_image", 0) == 0
    people = cell.people_note()  # several people: each one's score, instead of the family-wide one alone
    if single:
        image = cell.images[0]
        note = " ".join(n for n in (people, image.note) if n) or None
        clone.images[0] = core_grid.draw_score(processed.images[0], image.value, image.box, baseline, note)
    else:
        note = f"mean of {len(cell.images)}" + (f": {people}" if people else "")
        clone.images[0] = core_grid.draw_score(processed.images[0], cell.mean, None, baseline, note)
    return clone


# --- registry of grids in flight (read by the image-save callbacks and the run wrapper) ------------


class ImageMap:
    """Values keyed by PIL image *identity*, not kept alive by the map (PIL images compare by
    content and are unhashable, so a WeakKeyDictionary cannot hold them)."""

    def __init__(self) -> None:
        self._items: dict[int, tuple[weakref.ref, object]] = {}
        self._lock = threading.Lock()

    def __setitem__(self, image, value) -> None:
        with self._lock:
            for key in [k for k, (ref, _) in self._items.items() if ref() is None]:
                del self._items[key]
            self._items[id(image)] = (weakref.ref(image), value)

    def get(self, image, default=None):
        with self._lock:
            entry = self._items.get(id(image))
        return entry[1] if entry is not None and entry[0]() is image else default


_GRIDS = ImageMap()  # grid image -> GridScores
_SAVED_FILES = ImageMap()  # any image A1111 saved -> its file
SESSION_ATTRIBUTE = "likeness_grid"


def grid_of(image) -> GridScores | None:
    return _GRIDS.get(image)


def saved_name(image) -> str | None:
    return _SAVED_FILES.get(image)


@dataclass
class CellAttempt:
    """What the wrapped ``process_images`` saw of the cell being generated."""

    p: object | None = None
    error: BaseException | None = None


_ATTEMPT = threading.local()  # .current: the CellAttempt of the cell this thread is generating


def wrap_process_images(original: Callable) -> Callable:
    """The xyz module's ``process_images``: records the cell's processing object and the exception
    that ends its generation (re-raised unchanged: the X/Y/Z script handles it as before)."""
    if getattr(original, WRAPPED_MARK, None) is not None:
        return original

    @functools.wraps(original)
    def process_images(p, *args, **kwargs):
        attempt = getattr(_ATTEMPT, "current", None)
        if attempt is not None and attempt.p is None:
            attempt.p = p
        try:
            return original(p, *args, **kwargs)
        except BaseException as error:
            if attempt is not None and attempt.p is p:
                attempt.error = error
            raise

    setattr(process_images, WRAPPED_MARK, original)
    return process_images


def _interrupted() -> bool:
    try:
        from modules import shared

        return bool(shared.state.interrupted or getattr(shared.state, "stopping_generation", False))
    except Exception:  # noqa: BLE001 - outside A1111
        return False


def failed_cell(attempt: CellAttempt, scorer: Scorer | None) -> CellScores | None:
    """The :class:`CellScores` of a cell that produced no image (``None`` without a scorer), saying why."""
    p = attempt.p
    cell = vars(p).get(CELL_ATTRIBUTE) if p is not None else None
    if cell is None:
        if scorer is None:
            return None
        state = vars(p).get(axes.STATE_ATTRIBUTE) if p is not None else None
        prompt = getattr(p, "prompt", None)
        cell = CellScores(scorer, lora=state.info() if state is not None else {},
                          prompt=prompt if isinstance(prompt, str) or prompt is None else (prompt[0] if prompt else ""))
    if attempt.error is not None:
        reason = f"{type(attempt.error).__name__}: {attempt.error}".strip().rstrip(":")
    elif _interrupted():
        reason = "not generated: the X/Y/Z run was interrupted"
    elif p is None:
        reason = "not generated: A1111 skipped this cell"
    else:
        reason = "A1111 returned no image for this cell"
    expected = max(1, int(getattr(p, "batch_size", 1) or 1) * int(getattr(p, "n_iter", 1) or 1)) if p is not None else 1
    cell.failure = CellFailure(reason, expected)
    cell.images, cell.pil_images, cell.seeds = [], [], []  # what a failed cell scored before it raised is not shown
    return cell


def wrap_draw_xyz_grid(original: Callable) -> Callable:
    """The ``draw_xyz_grid`` wrapper described in the module docstring."""
    if getattr(original, WRAPPED_MARK, None) is not None:
        return original

    @functools.wraps(original)
    def draw_xyz_grid(p, xs, ys, zs, x_labels, y_labels, z_labels, cell, draw_legend, include_lone_images,
                      include_sub_grids, first_axes_processed, second_axes_processed, margin_size):
        results: dict[tuple[int, int, int], object] = {}
        attempts: dict[tuple[int, int, int], CellAttempt] = {}

        def recording_cell(x, y, z, ix, iy, iz):
            _ATTEMPT.current = attempt = CellAttempt()
            try:
                processed = cell(x, y, z, ix, iy, iz)
            finally:
                _ATTEMPT.current = None
            results[(ix, iy, iz)] = processed
            if not getattr(processed, "images", None):
                attempts[(ix, iy, iz)] = attempt
            return processed

        plain = original(p, xs, ys, zs, x_labels, y_labels, z_labels, recording_cell, draw_legend, include_lone_images,
                         include_sub_grids, first_axes_processed, second_axes_processed, margin_size)
        cells = {key: getattr(processed, "likeness", None) for key, processed in results.items()}
        cells = {key: value for key, value in cells.items() if value is not None}
        pending = [vars(a.p).get(CELL_ATTRIBUTE) for a in attempts.values() if a.p is not None]
        scorer = next((c.scorer for c in [*cells.values(), *pending] if c is not None), None)
        if scorer is None or not getattr(plain, "images", None):  # Likeness is off for this grid
            return plain
        for key, attempt in attempts.items():
            failed = failed_cell(attempt, scorer)
            if failed is not None:
                cells[key] = failed
        scores = GridScores(scorer, [str(v) for v in x_labels], [str(v) for v in y_labels], [str(v) for v in z_labels], cells)
        baseline = scorer.baseline
        made = [r.images[0].size for r in results.values() if getattr(r, "images", None)]
        size = made[0] if made else (int(getattr(p, "width", 64) or 64), int(getattr(p, "height", 64) or 64))

        def scored_cell(x, y, z, ix, iy, iz):
            return badge_cell(results[(ix, iy, iz)], cells.get((ix, iy, iz)), baseline, size)

        scored = original(p, xs, ys, zs, scores.labels_with_means(x_labels, 0), scores.labels_with_means(y_labels, 1),
                          scores.labels_with_means(z_labels, 2), scored_cell, draw_legend, include_lone_images,
                          include_sub_grids, first_axes_processed, second_axes_processed, margin_size)
        grids = 1 + len(zs)
        scored.images[grids:] = plain.images[grids:]  # lone images as generated, without badges
        caption = scores.caption()
        if caption and vars(p).get(DEFER_CAPTION_ATTRIBUTE):  # the host may still re-lay the main grid
            scores.caption_pending = True
        elif caption:  # under the main grid (the one saved and shown first)
            scored.images[0] = caption_below(scored.images[0], caption, details=scores.people_lines())
        scores.grid_images = list(scored.images[:grids])
        for image in scores.grid_images:
            _GRIDS[image] = scores
        setattr(p, SESSION_ATTRIBUTE, scores)
        setattr(scored, PROCESSED_ATTRIBUTE, scores)
        return scored

    setattr(draw_xyz_grid, WRAPPED_MARK, original)
    return draw_xyz_grid


def wrap_run(original: Callable) -> Callable:
    """``Script.run`` wrapper: grid infotexts, the summary in ``comments``, reports when the grid was
    not saved (``grid_save`` off)."""
    if getattr(original, WRAPPED_MARK, None) is not None:
        return original

    relays_main_grid = _takes_parameter(original, "row_count")  # Forge Neo's run re-lays a one-axis grid in rows

    @functools.wraps(original)
    def run(self, p, *args, **kwargs):
        if relays_main_grid:
            setattr(p, DEFER_CAPTION_ATTRIBUTE, True)
        processed = original(self, p, *args, **kwargs)
        scores = vars(p).pop(SESSION_ATTRIBUTE, None)
        if scores is None or processed is None:
            return processed
        adopt_main_grid(processed)  # the grid was not saved (grid_save off): the band goes on the image shown
        finish(scores, processed, fallback_dir=getattr(p, "outpath_grids", None))
        return processed

    setattr(run, WRAPPED_MARK, original)
    return run


def _takes_parameter(function: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def adopt_main_grid(processed) -> GridScores | None:
    """The scores of the ``Processed`` our ``draw_xyz_grid`` wrapper returned, with its current main grid
    known as theirs: a host that replaced ``images[0]`` after drawing (Forge Neo's rows) gets the new image
    registered, and the band drawn under it if it was deferred."""
    scores = getattr(processed, PROCESSED_ATTRIBUTE, None)
    images = getattr(processed, "images", None)
    if not isinstance(scores, GridScores) or not images or images[0] is None:
        return None
    if scores.caption_pending:
        scores.caption_pending = False
        processed.images[0] = caption_below(images[0], scores.caption(), details=scores.people_lines())
    main = processed.images[0]
    if grid_of(main) is not scores:
        _GRIDS[main] = scores
        scores.grid_images[:1] = [main]
    return scores


def finish(scores: GridScores, processed, fallback_dir: str | None) -> None:
    """Grid infotexts and the UI summary; the reports when no saved grid got them already."""
    n_grids = sum(1 for image in processed.images if grid_of(image) is scores)
    for index in range(min(n_grids, len(processed.infotexts))):
        processed.infotexts[index] = infotext_with_grid(processed.infotexts[index], scores)
    if processed.infotexts:
        processed.info = processed.infotexts[0]
    if not scores.reports and fallback_dir:
        stem = time.strftime("xyz_grid-%Y%m%d-%H%M%S")
        write_reports(scores, Path(fallback_dir), stem)
    run = scores.run(saved_name)
    lines = [f"Likeness (identity score, {run.settings.aggregation}): grid mean {core_grid.format_score(scores.mean)}",
             *scores.recommendation_text(), core_report.summary_table_text(run)]
    if run.people is not None:
        lines.append(core_report.people_table_text(run))
    lines += [f"Scores saved to {path}" for path in scores.reports]
    lines += [f"Warning: {w}" for w in run.warnings]
    text = "\n".join(lines)
    processed.comments = (processed.comments or "") + text + "\n"  # the UI shows comments under the gallery
    print("\n".join(f"[Likeness] {line}" for line in text.splitlines()), flush=True)  # API users see the console


def write_reports(scores: GridScores, folder: Path, stem: str) -> list[Path]:
    """``<stem>-likeness_scores.csv`` and ``.json`` in ``folder`` (the JSON: the core's report.json
    plus ``failed_cells``, the cells that produced no image and why, ``recommendation``, the core's
    recommendation or null, and with named reference folders ``people_recommendation``, the family's:
    the cell best for the worst-served person, each cell's per-person breakdown and warnings); an
    existing file of that name is renamed with its time first, never overwritten."""
    run = scores.run(saved_name)
    advice = scores.recommendation()
    people = scores.people_recommendation() if advice is not None else None
    data = {**run.as_dict(), "failed_cells": scores.failed_cells(),
            "recommendation": advice.as_dict() if advice is not None else None,
            **({"people_recommendation": people.as_dict()} if people is not None else {})}
    report = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, text in zip(REPORT_SUFFIXES, (core_report.scores_csv(run), report)):
        path = folder / f"{stem}{suffix}"
        core_report.preserve_file(path)
        write_text_atomic(path, text)
        written.append(path)
    scores.reports += written
    return written


# --- A1111 image-save callbacks -------------------------------------------------------------------


def on_before_image_saved(params) -> None:
    """The saved grid's infotext gets the grid mean and the recommendation (A1111 built it from the first cell)."""
    scores = grid_of(params.image)
    owner = getattr(params, "p", None)
    main_grid = bool(getattr(owner, "images", None)) and owner.images[0] is params.image
    if main_grid and (scores is None or scores.caption_pending):  # Forge Neo: the band goes on the grid it saves
        adopted = adopt_main_grid(owner)
        if adopted is not None:
            scores = adopted
            params.image = owner.images[0]  # A1111 and every Forge save params.image after this callback
    if scores is None or not isinstance(getattr(params, "pnginfo", None), dict):
        return
    params.pnginfo["parameters"] = infotext_with_grid(params.pnginfo.get("parameters"), scores)


def on_image_saved(params) -> None:
    """Remember where each image went (to name it in the reports); next to a saved scored grid,
    write the reports."""
    _SAVED_FILES[params.image] = str(params.filename)
    scores = grid_of(params.image)
    if scores is None or scores.reports:
        return
    path = Path(params.filename)
    scores.saved_grids.append(path)
    write_reports(scores, path.parent, path.stem)


# --- installing -----------------------------------------------------------------------------------


def find_xyz_module():
    """A1111's / Forge's loaded ``scripts/xyz_grid.py`` module, found the way other extensions
    find it (its classes' ``__module__`` is the file name), or None."""
    from modules import scripts

    for data in scripts.scripts_data:
        if data.script_class.__module__ == "xyz_grid.py" and hasattr(data.module, "draw_xyz_grid"):
            return data.module
    return None


def xyz_script_class(xyz) -> type:
    """The X/Y/Z script's class: the class defined in the xyz module with its own ``run`` (``Script`` in
    A1111 and lllyasviel's Forge, ``XYZ`` in Forge Classic / Neo)."""
    for value in vars(xyz).values():
        if isinstance(value, type) and value.__module__ == xyz.__name__ and callable(vars(value).get("run")):
            return value
    raise LookupError(f"the X/Y/Z script module {xyz.__name__!r} defines no script class with a run method")


def install_hooks(xyz) -> None:
    """Wrap ``draw_xyz_grid``, ``process_images`` and the script class's ``run`` of this xyz module (idempotent)."""
    script_class = xyz_script_class(xyz)
    xyz.draw_xyz_grid = wrap_draw_xyz_grid(xyz.draw_xyz_grid)
    if hasattr(xyz, "process_images"):  # the name its cells call (every host imports it from modules.processing)
        xyz.process_images = wrap_process_images(xyz.process_images)
    script_class.run = wrap_run(script_class.run)
