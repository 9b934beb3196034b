"""Follow a trainer's sample folder while it trains: score each new sample once, say which step is the person.

Polling only (no trainer changes, no file-system events that differ between systems): every
``interval_s`` the folder is listed; a file is scored once its size and modification time have stayed
the same across two polls and it decodes whole. A file still being written (a trainer that writes
in two parts, a slow disk) fails to decode or changes between polls: it is waited for, not failed,
until it has not changed for ``write_timeout_s`` (then its error is reported like any unreadable file).
Each sample is analysed once: results are kept by ``(size, mtime)``, and the face cache makes a
restart quick.

After each round with something new, the report folder is refreshed: ``report.json`` (``likeness score``'s
shape with ``recommendation``, whose ``best_step`` is the answer), ``report.md``, ``scores.csv``,
``summary.csv``, ``curves.png`` (identity vs step with CI bands: the sweep's curve) and ``report.html``.
The first write moves an earlier report to ``previous/<time>/`` (as ``likeness score`` does); later
rounds replace this run's own files atomically.
"""

from __future__ import annotations

import html
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .cache import FaceCache
from .faces import FaceEngine, FaceResult
from .images import relative_name, scan_images, write_bytes_atomic
from .outputs import ReportFolder
from .pipeline import ScoreRun, ScoreSettings, analyze_paths, image_groups, score_results
from .references import ReferenceSet
from .report import report_json, report_markdown, scores_csv, summary_csv, summary_table_text
from .steps import DEFAULT_PATIENCE, StepVerdict, epoch_steps, output_checkpoints, samples_checkpoints, step_verdict

#: The files ``likeness watch`` writes into ``--out``.
WATCH_FILES = ("report.json", "report.md", "scores.csv", "summary.csv", "curves.png", "report.html")


@dataclass
class WatchSettings:
    """How a sample folder is followed.

    Attributes:
        samples: the trainer's sample folder (``output/sample``, ``output/samples``, ``workspace/samples``).
        checkpoints: where its checkpoints are saved (default: the samples folder's parent), to name the
            one closest to the best step.
        interval_s: seconds between two looks at the folder.
        write_timeout_s: a file that does not decode is waited for this long after its last change
            before it counts as unreadable.
        patience: sample rounds without a gain after which the trend says so.
        score: aggregation, face choice, seed (``group_by`` is always ``step``).
    """

    samples: Path
    checkpoints: Path | None = None
    interval_s: float = 10.0
    write_timeout_s: float = 120.0
    patience: int = DEFAULT_PATIENCE
    score: ScoreSettings = field(default_factory=lambda: ScoreSettings(group_by="step"))

    def __post_init__(self) -> None:
        self.samples = Path(self.samples)
        if self.score.group_by != "step":
            self.score = ScoreSettings(self.score.aggregation, self.score.face_choice, "step", self.score.seed, self.score.n_boot)
        if self.interval_s <= 0:
            raise ValueError(f"interval_s must be above 0 seconds, not {self.interval_s!r}")


@dataclass
class _Seen:
    signature: tuple[int, int]  # (size in bytes, mtime in ns)
    changed_at: float  # time.monotonic() when the signature last changed


class SampleWatcher:
    """The scored state of one sample folder; :meth:`poll` takes in what is new."""

    def __init__(self, engine: FaceEngine, references: ReferenceSet, settings: WatchSettings,
                 cache: FaceCache | None = None, exclude: Sequence[Path] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.references = references
        self.settings = settings
        self.cache = cache
        self.exclude = list(exclude)
        self.clock = clock
        self._seen: dict[Path, _Seen] = {}
        self._done: dict[Path, tuple[tuple[int, int], FaceResult]] = {}
        self.analyses = 0
        """Images analysed (decoded and run through the face model, or taken from the cache)."""
        self.waiting: list[str] = []
        """Names of files seen but not scored yet (still being written)."""

    def _signature(self, path: Path) -> tuple[int, int] | None:
        try:
            info = os.stat(path)
        except OSError:
            return None
        return info.st_size, info.st_mtime_ns

    def poll(self) -> int:
        """Look at the folder once; returns how many samples were scored (new or rewritten)."""
        folder = self.settings.samples
        paths = scan_images(folder, exclude=self.exclude).paths if folder.is_dir() else []
        now = self.clock()
        ready = []
        for path in paths:
            signature = self._signature(path)
            if signature is None:
                continue
            done = self._done.get(path)
            if done is not None and done[0] == signature:
                continue
            seen = self._seen.get(path)
            if seen is None or seen.signature != signature:
                self._seen[path] = _Seen(signature, now)  # new or still growing: look again next round
                continue
            if signature[0] > 0:
                ready.append(path)
            elif now - seen.changed_at >= self.settings.write_timeout_s:
                ready.append(path)  # an empty file that stays empty: reported as unreadable
        scored = 0
        if ready:
            results = analyze_paths(self.engine, ready, cache=self.cache)
            self.analyses += len(ready)
            for path, result in zip(ready, results):
                seen = self._seen[path]
                still_writing = result.error is not None and now - seen.changed_at < self.settings.write_timeout_s
                if still_writing or self._signature(path) != seen.signature:
                    continue  # a part of the file is there: wait for the rest
                self._done[path] = (seen.signature, result)
                del self._seen[path]
                scored += 1
        self.waiting = sorted(relative_name(p, folder) for p in self._seen)
        return scored

    @property
    def n_scored(self) -> int:
        return len(self._done)

    def run(self) -> ScoreRun:
        """Everything scored so far as a :class:`~.pipeline.ScoreRun` grouped by step, with its verdict."""
        folder = self.settings.samples
        paths = sorted(self._done, key=lambda p: relative_name(p, folder))
        results = [self._done[p][1] for p in paths]
        names = [relative_name(p, folder) for p in paths]
        checkpoints = (output_checkpoints(self.settings.checkpoints) if self.settings.checkpoints is not None
                       else samples_checkpoints(folder))
        groups = image_groups(paths, folder, "step", epoch_steps(checkpoints))
        run = score_results(results, names, groups, self.references, self.settings.score, self.engine.describe(),
                            images_root=str(folder))
        run.warnings = list(self.engine.warnings) + run.warnings
        if self.waiting:
            run.warnings.append(f"{len(self.waiting)} sample(s) still being written, scored once complete: "
                                f"{', '.join(self.waiting[:3])}{', …' if len(self.waiting) > 3 else ''}")
        unknown = [g for g in run.groups if g.label == "unknown step"]
        if unknown:
            run.warnings.append(f"{unknown[0].n_images} image(s) name no training step (not a trainer's sample name); "
                                f"they are grouped as 'unknown step'")
        run.verdict = step_verdict(run, checkpoints, patience=self.settings.patience)
        return run


def curves_png(verdict: StepVerdict) -> bytes:
    """Identity vs step with CI bands: the sweep's curve (:func:`~.sweep.report.curves_png`)."""
    from .sweep.report import curves_png as sweep_curves

    return sweep_curves(verdict.recommendation)


def report_html(run: ScoreRun, curves: bytes | None) -> str:
    """One self-contained page: the verdict, the curve, the table, the warnings; refreshed every round."""
    from .sweep.report import data_uri

    verdict = run.verdict
    lines = verdict.lines() if verdict is not None else ["No sample with a face yet."]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Likeness watch</title>",
        ("<style>body{font-family:sans-serif;margin:1.5em;max-width:70em}pre{background:#f4f4f4;padding:.6em}"
         ".warn{color:#a40}</style></head><body>"),
        f"<h1>Likeness watch: {html.escape(str(run.images_root))}</h1>",
        f"<p>Updated {html.escape(time.strftime('%Y-%m-%d %H:%M:%S'))}; {len(run.images)} sample(s) scored.</p>",
        *(f"<p{' class=warn' if line.startswith('warning') else ''}>{html.escape(line)}</p>" for line in lines),
    ]
    if curves is not None:
        parts.append(f"<img alt='identity by step' src='{data_uri(curves, 'image/png')}'>")
    parts.append(f"<pre>{html.escape(summary_table_text(run))}</pre>")
    parts += [f"<p class=warn>warning: {html.escape(w)}</p>" for w in run.warnings]
    parts.append("</body></html>")
    return "\n".join(parts)


class WatchReport:
    """The ``--out`` folder of a watch: locked for the whole watch, refreshed after every round."""

    def __init__(self, folder: Path, option: str = "--out") -> None:
        self.folder = Path(folder)
        self._report = ReportFolder(self.folder, WATCH_FILES, option)
        self._first = True
        self.previous: Path | None = None

    def __enter__(self) -> WatchReport:  # noqa: PYI034 - as ReportFolder (typing.Self needs Python 3.11)
        self._report.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._report.__exit__(*exc)

    def publish(self, run: ScoreRun) -> dict[str, Path]:
        """Write the report of ``run``; returns ``{file name: path}``."""
        curves = curves_png(run.verdict) if run.verdict is not None else None
        contents: dict[str, bytes] = {}
        if curves is not None:
            contents["curves.png"] = curves
        for name, text in (("scores.csv", scores_csv(run)), ("summary.csv", summary_csv(run)),
                           ("report.json", report_json(run)), ("report.html", report_html(run, curves))):
            contents[name] = text.encode("utf-8")
        files = {name: self.folder / name for name in (*contents, "report.md")}
        contents["report.md"] = report_markdown(run, files).encode("utf-8")
        if self._first:  # an earlier report (another run's) moves to previous/ once, as likeness score does
            self.previous = self._report.previous
            for name, data in contents.items():
                write_bytes_atomic(self._report.path(name), data)
            self._report.commit()
            self._first = False
        else:  # our own files from the round before: replaced atomically
            for name, data in contents.items():
                write_bytes_atomic(self.folder / name, data)
        return files


def watch(watcher: SampleWatcher, report: WatchReport | None = None, once: bool = False,
          stop: threading.Event | None = None, on_round: Callable[[ScoreRun, int], None] | None = None,
          max_rounds: int | None = None) -> ScoreRun:
    """Poll until ``stop`` is set, Ctrl-C, or ``max_rounds``; returns the final run (its report written).

    ``once``: score what is complete now (two looks, ``interval_s`` apart at most one second, so that a
    file still being written is told apart), write the report and return. ``on_round(run, new)`` is called
    after every round that scored something (the CLI redraws its live table there). Ctrl-C (KeyboardInterrupt)
    ends the watch like ``stop``: the report of everything scored so far is written before returning.
    """
    stop = stop or threading.Event()
    rounds = 0
    run = None
    published = False
    try:
        while True:
            new = watcher.poll()
            rounds += 1
            if new or run is None:
                run = watcher.run()
                published = False
                if on_round is not None:
                    on_round(run, new)
            if once and rounds >= 2 and not _settling(watcher):
                break
            if once and rounds >= 2 + _once_extra_rounds(watcher):
                break
            if max_rounds is not None and rounds >= max_rounds:
                break
            if report is not None and not published and run is not None and new:
                report.publish(run)
                published = True
            wait = min(watcher.settings.interval_s, 1.0) if once else watcher.settings.interval_s
            if stop.wait(wait):
                break
    except KeyboardInterrupt:
        pass  # the report below is the complete one
    run = watcher.run()
    if report is not None:
        report.publish(run)
    return run


def _settling(watcher: SampleWatcher) -> bool:
    """Files seen changing at the last look (``--once`` gives them a few more looks)."""
    return bool(watcher.waiting)


def _once_extra_rounds(watcher: SampleWatcher) -> int:
    """How many more looks ``--once`` spends on files still being written: until their write timeout."""
    return max(0, int(watcher.settings.write_timeout_s / max(min(watcher.settings.interval_s, 1.0), 1e-3)))


# --------------------------------------------------------------------------------------------
# For hosts: a trainer's sample folder scored in one go, and validation images kept by step
# --------------------------------------------------------------------------------------------

#: How :func:`save_validation_images` names a host's validation image (``step_000500/likeness_sample_00.png``);
#: :mod:`.trainer_outputs` reads the step from the folder and the prompt index from the name.
VALIDATION_NAME = "step_{step:06d}/likeness_sample_{index:02d}.png"


def save_validation_images(arrays: Sequence, folder: Path, step: int) -> list[Path]:
    """Keep a training node's validation images (``(H, W, 3)`` uint8 RGB arrays, one per validation prompt, in
    prompt order) as the samples of ``step`` under ``folder``, so that every step's images can be scored together.
    A step's images replace that step's earlier ones (the same step validated again); each file is written
    atomically. Returns the paths, in order."""
    import io

    from PIL import Image

    if step < 0:
        raise ValueError(f"the training step must be 0 or more, not {step}")
    paths = []
    for index, array in enumerate(arrays):
        path = Path(folder) / VALIDATION_NAME.format(step=int(step), index=index)
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        write_bytes_atomic(path, buffer.getvalue())
        paths.append(path)
    return paths


def score_samples_folder(engine: FaceEngine, references: ReferenceSet, samples: Path, face_choice: str = "largest",
                         cache: FaceCache | None = None, progress=None) -> ScoreRun:
    """Every sample under a trainer's sample folder scored and grouped by step, with the verdict (best step,
    trend, closest checkpoint) in ``run.verdict``; what ``likeness watch --once`` reports, for a host's node."""
    from .pipeline import score_image_folder

    settings = ScoreSettings(aggregation=references.baseline.aggregation, face_choice=face_choice, group_by="step")
    return score_image_folder(engine, references, Path(samples), settings, cache=cache, progress=progress)
