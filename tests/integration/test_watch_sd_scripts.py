"""``likeness watch`` follows a real sd-scripts run while it trains (issue 14's "Done when").

Runs only with ``SD_SCRIPTS_DIR`` set (+ ``SD_SCRIPTS_ACCELERATE``, default: found as ``likeness train`` finds
it; ``SD_SCRIPTS_PYTHON`` is not needed: accelerate launches its own interpreter) and the random full-size SD1.5
at ``$LIKENESS_SD15_CKPT`` (default ``~/.cache/likeness-tests/sd15_random_fp16.safetensors``; read only).

sd-scripts' own ``train_network.py`` trains a LoRA on two photos from ``../shared/faces`` at 64 px for 6 steps on
the CPU, with the options docs/trainers.md gives for sd-scripts (read from the docs, only the numbers made
small): ``--sample_every_n_steps``, ``--sample_prompts`` (a prompt file whose lines end in ``--d 42``) and
``--save_every_n_steps``. ``likeness watch --refs … --samples OUTPUT/sample --out …`` is started as a subprocess
*before* training (the sample folder does not exist yet) and follows it live; after training it is stopped with
SIGINT. Random weights draw no faces, so the expected verdict is "no recommendation: no faces", said plainly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from likeness_assets import PACK_DIR, PEOPLE

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LIKENESS_SHARED", REPO.parent / "shared"))
TOKENIZER = SHARED / "tokenizers" / "sd1_clip"
DOCS = REPO / "docs" / "trainers.md"

NAME = "me"
STEPS_PER_EPOCH = 2  # two photos, one repeat, batch 1
EPOCHS = 3
SAMPLE_EVERY = 2  # samples at steps 2, 4, 6
SAVE_EVERY = 3  # checkpoints at steps 3, 6 (less often than samples, as the issue says trainers do)
SIZE = 64
#: sd-scripts' sample names (train_util.sample_image_inference), read here without the core's parser.
SD_SCRIPTS_SAMPLE = re.compile(rf"^{NAME}_(?P<step>\d{{6}})_(?P<prompt>\d{{2}})_\d{{14}}_(?P<seed>\d+)\.png$")


def _checkout(variable: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"{variable} is not set")
    folder = Path(value)
    assert folder.is_dir(), f"{variable}={value} is not a folder"
    return folder


def _sd15_checkpoint() -> Path:
    given = os.environ.get("LIKENESS_SD15_CKPT")
    path = Path(given) if given else Path.home() / ".cache" / "likeness-tests" / "sd15_random_fp16.safetensors"
    if not path.is_file():
        pytest.skip(f"no random full-size SD1.5 at {path} (make it with shared/tools/make_random_sd15.py)")
    return path


def docs_sd_scripts_lines() -> tuple[list[str], str]:
    """The sd-scripts options and the example prompt line docs/trainers.md tells the user to set."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## sd-scripts", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    options, prompt = [], None
    for line in block.splitlines():
        code, _, comment = line.partition("#")
        options += code.split()
        if not code.strip() and "--d " in comment:
            prompt = comment.strip()
    assert prompt is not None, block
    return options, prompt


def _small(options: list[str], prompt_file: Path) -> list[str]:
    """The docs' options with this test's numbers (same option names and order)."""
    values = {"--sample_every_n_steps": str(SAMPLE_EVERY), "--sample_prompts": str(prompt_file), "--save_every_n_steps": str(SAVE_EVERY)}
    out = []
    for i, item in enumerate(options):
        previous = options[i - 1] if i else None
        out.append(values.get(previous, item))
    return out


def _safetensors_metadata(path: Path) -> dict:
    with open(path, "rb") as handle:
        size = struct.unpack("<Q", handle.read(8))[0]
        return json.loads(handle.read(size)).get("__metadata__", {})


def _wait_for(predicate, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the watch ended early (exit {process.returncode}) while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _report_images(report: Path) -> int:
    try:
        return len(json.loads(report.read_text(encoding="utf-8"))["images"])
    except (OSError, ValueError, KeyError):
        return -1


def test_watch_follows_a_real_sd_scripts_run(tmp_path):
    sd_dir = _checkout("SD_SCRIPTS_DIR")
    base = _sd15_checkpoint()
    from lora_likeness.steps import samples_checkpoints
    from lora_likeness.training.config import TrainConfig
    from lora_likeness.training.sd_scripts import prepare
    from PIL import Image

    # A tiny DreamBooth folder of real photos (small: sd-scripts resizes to 64 px anyway) and other photos as refs.
    person = PEOPLE / "lfw_colin_powell"
    photos = sorted(person.glob("*.jpg"))
    train = tmp_path / "data" / "img" / "1_ohwx man"
    train.mkdir(parents=True)
    for i, photo in enumerate(photos[:STEPS_PER_EPOCH]):
        Image.open(photo).convert("RGB").resize((SIZE, SIZE)).save(train / f"p{i}.png")
        (train / f"p{i}.txt").write_text("photo of ohwx man\n", encoding="utf-8")
    refs = tmp_path / "refs"
    refs.mkdir()
    for photo in photos[STEPS_PER_EPOCH:STEPS_PER_EPOCH + 3]:
        (refs / photo.name).write_bytes(photo.read_bytes())

    # The docs' sd-scripts lines, with small numbers: two prompts of the person, each with the docs' fixed seed.
    options, prompt_line = docs_sd_scripts_lines()
    seed = int(re.search(r"--d (\d+)", prompt_line)[1])
    small_prompt = re.sub(r"--w \d+ --h \d+ --s \d+", f"--w {SIZE} --h {SIZE} --s 2", prompt_line)
    assert small_prompt != prompt_line, prompt_line
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(small_prompt.replace("sks", "ohwx") + "\n" + small_prompt.replace("sks", "ohwx").replace("portrait", "close-up")
                       + "\n", encoding="utf-8")

    out = tmp_path / "out"
    accelerate = os.environ.get("SD_SCRIPTS_ACCELERATE")
    config = TrainConfig(base=base, data=tmp_path / "data", out=out, name=NAME, epochs=EPOCHS, rank=4, alpha=2, resolution=SIZE,
                         buckets=False, mixed_precision="no", text_encoder_lr=0.0, tokenizer=TOKENIZER, backend="sd-scripts",
                         sd_scripts=sd_dir, accelerate=Path(accelerate) if accelerate else None)
    command, _, _ = prepare(config)  # accelerate launch train_network.py …, the dataset .toml and the offline tokenizer
    command = [c for c in command if not c.startswith("--save_every_n_epochs") and c != "--save_state"]  # by step only
    command += _small(options, prompts)

    # likeness watch, started before training: OUTPUT/sample does not exist yet.
    samples = out / "sample"
    report_dir = tmp_path / "watch"
    cache = tmp_path / "cache"
    env = {**os.environ, "LIKENESS_CACHE_DIR": str(cache)}
    watch_stdout, watch_stderr = tmp_path / "watch.out", tmp_path / "watch.err"
    watch_argv = [sys.executable, "-m", "lora_likeness.cli", "watch", "--refs", str(refs), "--samples", str(samples),
                  "--out", str(report_dir), "--pack", str(PACK_DIR), "--providers", "cpu", "--interval", "1"]
    started = time.monotonic()
    with open(watch_stdout, "w") as so, open(watch_stderr, "w") as se:
        watcher = subprocess.Popen(watch_argv, stdout=so, stderr=se, text=True, env=env)
    try:
        time.sleep(2)
        assert watcher.poll() is None, f"watch ended before training began: {watch_stderr.read_text()}"
        # COLUMNS: sd-scripts logs through rich, which wraps lines at 80 columns when it is not on a terminal.
        train_env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", COLUMNS="400")
        training = subprocess.run(command, cwd=sd_dir, capture_output=True, text=True, env=train_env, timeout=1500, check=False)
        trained = time.monotonic()
        (tmp_path / "train.log").write_text(training.stdout + training.stderr, encoding="utf-8")
        assert training.returncode == 0, training.stderr[-4000:]

        # What sd-scripts wrote: its sample names and its own log of the steps it sampled at.
        written = sorted(p.name for p in samples.iterdir())
        parsed = [SD_SCRIPTS_SAMPLE.match(name) for name in written]
        assert all(parsed), written
        sampled_steps = sorted({int(m["step"]) for m in parsed})
        assert sampled_steps == list(range(SAMPLE_EVERY, STEPS_PER_EPOCH * EPOCHS + 1, SAMPLE_EVERY))
        logged = [int(s) for s in re.findall(r"generating sample images at step[^:]*: (\d+)", training.stdout + training.stderr)]
        assert logged == sampled_steps, logged
        assert {int(m["prompt"]) for m in parsed} == {0, 1} and {int(m["seed"]) for m in parsed} == {seed}
        assert len(written) == 2 * len(sampled_steps)

        _wait_for(lambda: _report_images(report_dir / "report.json") == len(written), 120, "every sample in the live report", watcher)
        caught_up = time.monotonic()
        watcher.send_signal(signal.SIGINT)
        watcher.wait(timeout=120)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    stdout, stderr = watch_stdout.read_text(), watch_stderr.read_text()
    assert watcher.returncode == 0, stderr
    assert "Traceback" not in stdout + stderr

    # Each sample scored once: the rounds' "(+new)" add up to the number of samples, in more than one round
    # (it followed the run live), and the face cache holds each sample's analysis once (plus the refs).
    rounds = [(int(total), int(new)) for total, new in re.findall(r"^(\d+) sample\(s\) scored \(\+(\d+)\)", stdout, re.MULTILINE)]
    assert sum(new for _, new in rounds) == len(written) == rounds[-1][0], stdout
    assert len([r for r in rounds if r[1]]) >= 2, f"the watch saw everything in one round: not live ({rounds})"
    with sqlite3.connect(cache / next(p.name for p in cache.glob("faces-v*.sqlite"))) as db:
        cached = db.execute("select count(*) from faces").fetchone()[0]
    assert cached <= len(written) + 3

    # The complete report, written at SIGINT.
    for name in ("report.json", "report.md", "scores.csv", "summary.csv", "report.html"):
        assert (report_dir / name).is_file(), name
    assert not [p for p in report_dir.iterdir() if p.name.endswith(".tmp")]
    data = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    assert sorted(image["path"] for image in data["images"]) == written
    groups = data["groups"]
    assert [g["label"] for g in groups] == [f"step {s}" for s in sampled_steps]
    assert [g["step"] for g in groups] == sampled_steps and all(type(g["step"]) is int for g in groups)
    assert all(g["n_images"] == 2 for g in groups)
    html = (report_dir / "report.html").read_text(encoding="utf-8")
    assert f"{len(written)} sample(s) scored" in html and "</html>" in html

    # Random weights draw no faces: the verdict says so plainly.
    assert all(g["n_faces"] == 0 for g in groups)
    recommendation = data.get("recommendation")
    verdict_text = (recommendation or {}).get("headline", "") if recommendation else stdout
    assert "no face" in verdict_text.lower(), (recommendation, stdout[-2000:])
    assert "no face" in stdout.lower()

    # The checkpoints sd-scripts saved, recognised and labelled by step (as its metadata records them).
    saved = sorted(p.name for p in out.glob("*.safetensors"))
    assert saved == sorted([f"{NAME}.safetensors", *(f"{NAME}-step{s:08d}.safetensors" for s in range(SAVE_EVERY, STEPS_PER_EPOCH * EPOCHS + 1,
                                                                                                       SAVE_EVERY))])
    found = {c.name: c for c in samples_checkpoints(samples)}
    for name in saved:
        meta_steps = int(_safetensors_metadata(out / name)["ss_steps"])
        assert found[name].step == meta_steps, name
        if name != f"{NAME}.safetensors":
            assert found[name].label == f"step {meta_steps}" and f"{meta_steps:08d}" in name

    # likeness watch --once afterwards agrees with the live watch.
    once = subprocess.run([*watch_argv[:watch_argv.index("--out")], "--out", str(tmp_path / "once"), "--pack", str(PACK_DIR),
                           "--providers", "cpu", "--once", "--json", "-"], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert once.returncode == 0, once.stderr
    again = json.loads(once.stdout)
    assert [(g["label"], g["step"], g["n_images"], g["n_faces"]) for g in again["groups"]] == \
        [(g["label"], g["step"], g["n_images"], g["n_faces"]) for g in groups]
    assert sorted(image["path"] for image in again["images"]) == written
    assert (again.get("recommendation") or {}).get("headline") == (recommendation or {}).get("headline")
    print(f"\nsd-scripts run {trained - started:.0f} s; watch caught up {caught_up - trained:.1f} s after training ended; "
          f"rounds {rounds}; samples {written}; checkpoints {saved}")
    print("watch stdout:\n" + stdout)
