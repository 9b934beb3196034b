"""Following a trainer's sample folder: every trainer's layout, the best step, the over-training warning,
files written in two parts, and a watch stopped half-way leaving a complete report (real face pack)."""

from __future__ import annotations

import json
import threading

import pytest
from lora_likeness.pipeline import build_references
from lora_likeness.watch import WATCH_FILES, SampleWatcher, WatchReport, WatchSettings, watch
from trainer_layouts import BEST_STEP, LAYOUTS, OTHER_SAMPLES, STEPS, TIME, references, save_as


@pytest.fixture(scope="module")
def refs(engine, tmp_path_factory):
    return build_references(engine, references(tmp_path_factory.mktemp("refs")))


class FakeClock:
    """A clock the test moves (no sleeping): the watcher's write timeout is measured on it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("trainer", sorted(LAYOUTS))
def test_each_trainers_samples_give_the_best_step_and_the_overtraining_warning(trainer, engine, refs, tmp_path, cache):
    samples = LAYOUTS[trainer](tmp_path)
    watcher = SampleWatcher(engine, refs, WatchSettings(samples, interval_s=0.01), cache=cache)
    with WatchReport(tmp_path / "report") as report:
        run = watch(watcher, report, once=True)
    assert [g.info["step"] for g in run.groups] == STEPS
    assert all(g.n_images == 4 and g.n_faces == 4 for g in run.groups)
    verdict = run.verdict
    assert verdict.best_step == BEST_STEP and verdict.recommendation.best.label == f"step {BEST_STEP}"
    assert verdict.falling and any("likely over-training" in line for line in verdict.trend)
    assert verdict.trend[0].startswith(f"best so far: step {BEST_STEP} (")
    # checkpoints every 500 steps: 750 is as close to 500 as to 1000, and the earlier one is named
    assert verdict.checkpoint is not None and verdict.checkpoint.step == 500
    assert verdict.recommendation.paired  # paired by sample prompt (and seed where the name has it)
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["settings"]["group_by"] == "step"
    assert [g["step"] for g in data["groups"]] == STEPS
    assert data["recommendation"]["best_step"] == BEST_STEP and data["recommendation"]["falling"] is True
    for name in WATCH_FILES:
        assert (tmp_path / "report" / name).stat().st_size > 0, name


def test_a_sample_written_in_two_parts_is_scored_once_complete(engine, refs, tmp_path, cache):
    samples = tmp_path / "output" / "sample"
    complete = save_as(OTHER_SAMPLES[0], tmp_path / "whole.png").read_bytes()
    target = samples / f"jx_000250_00_{TIME}_42.png"
    samples.mkdir(parents=True)
    clock = FakeClock()
    watcher = SampleWatcher(engine, refs, WatchSettings(samples, interval_s=0.01, write_timeout_s=60), cache=cache, clock=clock)
    half_written, may_finish, finished = threading.Event(), threading.Event(), threading.Event()

    def slow_trainer() -> None:  # writes half the file, waits, then the rest (a slow disk, a big PNG)
        with open(target, "wb") as handle:
            handle.write(complete[: len(complete) // 2])
            handle.flush()
            half_written.set()
            may_finish.wait(10)
            handle.write(complete[len(complete) // 2:])
        finished.set()

    writer = threading.Thread(target=slow_trainer)
    writer.start()
    assert half_written.wait(10)
    assert watcher.poll() == 0  # seen for the first time: looked at again next round
    clock.now += 1
    assert watcher.poll() == 0  # unchanged but truncated: waited for, not failed
    assert watcher.waiting == [target.name] and watcher.n_scored == 0
    may_finish.set()
    assert finished.wait(10)
    writer.join(10)
    clock.now += 1
    assert watcher.poll() == 0  # grown since: looked at again next round
    clock.now += 1
    assert watcher.poll() == 1
    assert watcher.poll() == 0  # scored once
    run = watcher.run()
    assert len(run.images) == 1 and run.images[0].error is None and run.images[0].score.face_found
    assert watcher.waiting == []


def test_a_file_that_never_completes_is_reported_after_the_write_timeout(engine, refs, tmp_path, cache):
    samples = tmp_path / "samples"
    samples.mkdir()
    broken = samples / "1765102500000__000000250_0.jpg"
    broken.write_bytes(OTHER_SAMPLES[0].read_bytes()[:500])
    clock = FakeClock()
    watcher = SampleWatcher(engine, refs, WatchSettings(samples, interval_s=0.01, write_timeout_s=30), cache=cache, clock=clock)
    watcher.poll()
    clock.now += 10
    assert watcher.poll() == 0
    clock.now += 30
    assert watcher.poll() == 1
    run = watcher.run()
    assert run.images[0].error is not None and "truncated" in run.images[0].error


def test_stopping_the_live_watch_leaves_a_complete_report(engine, refs, tmp_path, cache):
    samples = LAYOUTS["ai-toolkit"](tmp_path)
    watcher = SampleWatcher(engine, refs, WatchSettings(samples, interval_s=0.01), cache=cache)
    stop = threading.Event()
    rounds = []

    def on_round(run, new):
        rounds.append(new)
        if new:
            stop.set()  # what Ctrl-C's handler (or a host's stop button) does

    with WatchReport(tmp_path / "report") as report:
        run = watch(watcher, report, stop=stop, on_round=on_round)
    assert sum(rounds) == 20 and len(run.images) == 20
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert len(data["images"]) == 20 and data["recommendation"]["best_step"] == BEST_STEP


def test_ctrl_c_during_the_watch_leaves_a_complete_report(engine, refs, tmp_path, cache):
    samples = LAYOUTS["sd-scripts"](tmp_path)
    watcher = SampleWatcher(engine, refs, WatchSettings(samples, interval_s=0.01, patience=2), cache=cache)

    class InterruptingEvent(threading.Event):
        """Raises KeyboardInterrupt where the watch waits once everything is scored (Ctrl-C at the terminal)."""

        def wait(self, timeout=None):
            if watcher.n_scored == 20:
                raise KeyboardInterrupt
            return super().wait(timeout)

    earlier = tmp_path / "report"
    earlier.mkdir()
    (earlier / "report.json").write_text("{\"earlier\": true}")
    with WatchReport(earlier) as report:
        run = watch(watcher, report, stop=InterruptingEvent())
    assert len(run.images) == 20
    # the best step is two sample rounds back: with patience 2 the trend says the curve has stopped improving
    assert run.verdict.trend[0].endswith("; no gain over the last 2 sample rounds")
    data = json.loads((earlier / "report.json").read_text())
    assert data["recommendation"]["best_step"] == BEST_STEP
    kept = list((earlier / "previous").rglob("report.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == {"earlier": True}  # moved once, never overwritten
