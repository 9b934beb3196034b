"""``likeness watch --once`` and ``likeness score --group-by step|lora`` end to end on trainers' folders:
step order, best step, over-training warning, the recommendation in report.json (real face pack)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from likeness_assets import PACK_DIR
from lora_likeness import cli
from trainer_layouts import BEST_STEP, LAYOUTS, STEPS, references, sample_photo, save_as

SCHEMA = json.loads((Path(cli.__file__).parent / "report.schema.json").read_text())


def run_cli(args, capsys):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_watch_once_reports_the_best_step_and_the_fall(tmp_path, capsys):
    samples = LAYOUTS["sd-scripts"](tmp_path)
    refs = references(tmp_path)
    out, report_json = tmp_path / "watch", tmp_path / "watch.json"
    code, stdout, stderr = run_cli(["watch", "--refs", refs, "--samples", samples, "--pack", PACK_DIR, "--providers", "cpu",
                                    "--once", "--interval", "0.05", "--out", out, "--json", report_json,
                                    "--cache-dir", tmp_path / "cache"], capsys)
    assert code == 0, stderr
    assert f"best so far: step {BEST_STEP}" in stdout and "likely over-training" in stdout
    assert "closest saved checkpoint: jx_face-step00000500.safetensors" in stdout
    assert stdout.count(f"best so far: step {BEST_STEP}") == 1  # the verdict once, under the table
    data = json.loads(report_json.read_text())
    jsonschema.validate(data, SCHEMA)
    assert [g["step"] for g in data["groups"]] == STEPS
    assert data["recommendation"]["best_step"] == BEST_STEP and data["recommendation"]["best"] == f"step {BEST_STEP}"
    assert data["recommendation"]["checkpoint"]["step"] == 500
    for name in ("report.html", "curves.png", "report.json", "report.md"):
        assert (out / name).stat().st_size > 0
    assert f"step {BEST_STEP}" in (out / "report.html").read_text()


def test_watch_usage_errors_exit_2(tmp_path, capsys):
    refs = references(tmp_path)
    code, _, stderr = run_cli(["watch", "--refs", refs, "--samples", tmp_path / "missing", "--pack", PACK_DIR, "--once"], capsys)
    assert code == 2 and "--samples" in stderr and "does not exist" in stderr
    code, _, stderr = run_cli(["watch", "--refs", refs, "--samples", refs, "--pack", PACK_DIR, "--interval", "0"], capsys)
    assert code == 2 and "--interval" in stderr


def test_score_group_by_step_gives_a_row_per_step_in_step_order(tmp_path, capsys):
    samples = LAYOUTS["onetrainer"](tmp_path)
    refs = references(tmp_path)
    code, stdout, stderr = run_cli(["score", "--refs", refs, "--images", samples, "--pack", PACK_DIR, "--providers", "cpu",
                                    "--group-by", "step", "--json", tmp_path / "r.json", "--out", tmp_path / "report",
                                    "--quiet", "--no-contact-sheet", "--cache-dir", tmp_path / "cache"], capsys)
    assert code == 0, stderr
    data = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(data, SCHEMA)
    assert [(g["label"], g["step"]) for g in data["groups"]] == [(f"step {s}", s) for s in STEPS]
    assert all(isinstance(g["epoch"], int) for g in data["groups"])  # OneTrainer's names carry the epoch
    assert data["recommendation"]["best_step"] == BEST_STEP
    assert f"Recommended: step {BEST_STEP}" in stdout
    assert (tmp_path / "report" / "curves.png").stat().st_size > 0


def a1111_grid(folder: Path) -> Path:
    """An X/Y/Z plot made in A1111 with Prompt S/R over ``<lora:jx-00000N:1>`` (epochs 1-5), 4 seeds: the infotext
    A1111 writes into each PNG (processing.create_infotext: prompt, Negative prompt, then "Steps: …, Seed: …")."""
    number = 0
    for epoch, step in enumerate(STEPS, start=1):
        for seed in range(4):
            parameters = (f"photo of sks man <lora:jx-{epoch:06d}:1>\nNegative prompt: blurry\n"
                          f"Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: {100 + seed}, Size: 512x512, Model: v1-5")
            save_as(sample_photo(step, seed), folder / f"{number:05d}-{100 + seed}.png", {"parameters": parameters})
            number += 1
    return folder


def test_score_group_by_lora_recommends_the_checkpoint_paired_by_seed(tmp_path, capsys):
    images = a1111_grid(tmp_path / "outputs")
    refs = references(tmp_path)
    code, stdout, stderr = run_cli(["score", "--refs", refs, "--images", images, "--pack", PACK_DIR, "--providers", "cpu",
                                    "--group-by", "lora", "--json", tmp_path / "r.json", "--quiet",
                                    "--cache-dir", tmp_path / "cache"], capsys)
    assert code == 0, stderr
    data = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(data, SCHEMA)
    best_epoch = 1 + STEPS.index(BEST_STEP)
    assert [g["epoch"] for g in data["groups"]] == [1, 2, 3, 4, 5]
    recommendation = data["recommendation"]
    assert recommendation["best"] == f"jx e{best_epoch} @1"  # the group's label, which names the strength already
    assert recommendation["best_epoch"] == best_epoch and recommendation["paired"] is True
    assert recommendation["n_pairs"] == 4  # the four seeds of the grid
    assert "Recommended: jx e3" in stdout and "likely over-training" in stdout


def test_live_table_shows_every_step_and_the_verdict(engine, tmp_path, cache):
    from lora_likeness.pipeline import build_references
    from lora_likeness.watch import SampleWatcher, WatchSettings, watch
    from lora_likeness.watch_command import live_table
    from rich.console import Console

    samples = LAYOUTS["musubi-tuner"](tmp_path)
    watcher = SampleWatcher(engine, build_references(engine, references(tmp_path)), WatchSettings(samples, interval_s=0.01),
                            cache=cache)
    console = Console(record=True, width=160)
    console.print(live_table(watch(watcher, once=True)))
    text = console.export_text()
    lines = [line for line in text.splitlines() if line.lstrip("│ ").startswith("step ")]
    assert [line.split("│")[1].strip() for line in lines] == [f"step {s}" for s in STEPS]
    assert f"best so far: step {BEST_STEP}" in text and "likely over-training" in text


def test_ctrl_c_ends_a_live_watch_with_a_complete_report(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    samples = LAYOUTS["ai-toolkit"](tmp_path)
    refs = references(tmp_path)
    out = tmp_path / "watch"
    env = {**os.environ, "LIKENESS_CACHE_DIR": str(tmp_path / "cache")}
    process = subprocess.Popen(
        [sys.executable, "-m", "lora_likeness.cli", "watch", "--refs", str(refs), "--samples", str(samples),
         "--pack", str(PACK_DIR), "--providers", "cpu", "--interval", "0.2", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120  # a stop hook, not a fixed sleep: wait until every sample is in the report
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if len(json.loads((out / "report.json").read_text())["images"]) == 20:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert f"best so far: step {BEST_STEP}" in stdout and "report: " in stdout
    data = json.loads((out / "report.json").read_text())
    assert len(data["images"]) == 20 and data["recommendation"]["best_step"] == BEST_STEP
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no half-written file left


def test_a_live_watch_started_before_the_trainer_waits_for_its_sample_folder(tmp_path):
    """A trainer makes its sample folder with the first samples (sd-scripts: OUTPUT/sample): a live watch started
    before it notes that and waits, then scores what appears; ``--once`` on a missing folder stays an error."""
    import os
    import signal
    import subprocess
    import sys
    import time

    staged = LAYOUTS["sd-scripts"](tmp_path / "staged")
    samples = tmp_path / "output" / "sample"
    refs = references(tmp_path)
    out = tmp_path / "watch"
    env = {**os.environ, "LIKENESS_CACHE_DIR": str(tmp_path / "cache")}
    stderr_file = tmp_path / "watch.err"
    with open(stderr_file, "w") as stderr_handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "lora_likeness.cli", "watch", "--refs", str(refs), "--samples", str(samples),
             "--pack", str(PACK_DIR), "--providers", "cpu", "--interval", "0.2", "--out", str(out)],
            stdout=subprocess.PIPE, stderr=stderr_handle, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None and "waiting for the trainer" not in stderr_file.read_text():
            time.sleep(0.2)
        assert process.poll() is None, stderr_file.read_text()
        samples.parent.mkdir()
        os.rename(staged, samples)  # the trainer's first samples appear
        n_images = len(list(samples.glob("*.png")))
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if len(json.loads((out / "report.json").read_text())["images"]) == n_images:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        assert process.poll() is None, stderr_file.read_text()
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr_file.read_text()
    data = json.loads((out / "report.json").read_text())
    assert len(data["images"]) == n_images and data["recommendation"]["best_step"] == BEST_STEP
    assert f"best so far: step {BEST_STEP}" in stdout
