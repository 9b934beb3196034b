"""`likeness score` end to end on the seed layout: groups, bad files, report files, JSON schema,
cache, and nothing ever overwritten."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from PIL import Image

from likeness_assets import FACES, PACK_DIR, PEOPLE
from lora_likeness import cli
from lora_likeness.faces import FaceEngine

SCHEMA = json.loads((Path(cli.__file__).parent / "report.schema.json").read_text())


@pytest.fixture()
def layout(tmp_path):
    """refs/ (3 Obama photos) and generated_images/exp_e10, exp_e20 as in the seed experiments."""
    refs = tmp_path / "refs"
    refs.mkdir()
    obama = sorted((PEOPLE / "obama").iterdir())
    for photo in obama[:3]:
        shutil.copy(photo, refs / photo.name)
    e10 = tmp_path / "generated_images" / "exp_e10"
    e20 = tmp_path / "generated_images" / "exp_e20"
    e10.mkdir(parents=True)
    e20.mkdir(parents=True)
    shutil.copy(obama[3], e10 / "0001.jpg")
    shutil.copy(FACES / "group_photos" / "two_people.jpg", e10 / "0002.jpg")
    Image.new("RGB", (128, 128), (120, 120, 120)).save(e10 / "0003_noface.png")
    (e10 / "0004_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    for i, photo in enumerate(sorted((PEOPLE / "lfw_george_w_bush").iterdir())[:3]):
        shutil.copy(photo, e20 / f"{i:04d}.jpg")
    return tmp_path


def run_cli(args, capsys):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_score_writes_every_report_and_the_json_follows_the_schema(layout, capsys):
    out, cache = layout / "report", layout / "cache"
    code, stdout, _ = run_cli(
        ["score", "--refs", layout / "refs", "--images", layout / "generated_images", "--pack", PACK_DIR,
         "--out", out, "--cache-dir", cache, "--quiet"], capsys)
    assert code == 0
    for name in ("scores.csv", "summary.csv", "report.json", "report.md", "scores.png", "contact_sheet.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    groups = {g["label"]: g for g in report["groups"]}
    assert list(groups) == ["exp_e10", "exp_e20"]
    e10, e20 = groups["exp_e10"], groups["exp_e20"]
    assert (e10["n_images"], e10["n_errors"], e10["n_faces"]) == (4, 1, 2)
    assert e10["no_face_rate"] == pytest.approx(1 / 3)
    assert e10["max"] > 0.5 > e20["max"]  # the Obama photo scores like Obama, Bush does not
    images = {i["path"]: i for i in report["images"]}
    assert "corrupt" in images["exp_e10/0004_corrupt.jpg"]["error"]
    assert images["exp_e10/0003_noface.png"]["face_found"] is False and images["exp_e10/0003_noface.png"]["error"] is None
    assert report["references"]["n"] == 3 and report["model"]["embedding_dim"] == 128
    assert "exp_e10" in stdout and "(reference baseline)" in stdout
    baseline_line = next(l for l in (out / "report.md").read_text().splitlines() if l.startswith("| (reference baseline)"))
    assert f"| {report['references']['baseline_mean']:.3f} |" in baseline_line
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.width >= 160 * 4
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("label,n_images,n_faces") and len(summary) == 3


def test_second_run_hits_the_cache_and_keeps_the_first_report(layout, capsys, monkeypatch):
    out, cache, json_file = layout / "report", layout / "cache", layout / "scores.json"
    args = ["score", "--refs", layout / "refs", "--images", layout / "generated_images", "--pack", PACK_DIR,
            "--out", out, "--json", json_file, "--cache-dir", cache, "--quiet"]
    assert run_cli(args, capsys)[0] == 0
    first = json.loads(json_file.read_text())

    calls = []
    original = FaceEngine.analyze
    monkeypatch.setattr(FaceEngine, "analyze", lambda self, image: calls.append(image.path) or original(self, image))
    assert run_cli(args, capsys)[0] == 0
    second = json.loads(json_file.read_text())
    # Only the unreadable file is looked at again (errors are not cached); 9 of 10 files are hits.
    assert [p.name for p in calls] == ["0004_corrupt.jpg"]
    assert second["timings"]["cache_hits"] == 9
    assert [g["mean"] for g in second["groups"]] == [g["mean"] for g in first["groups"]]
    previous = list((out / "previous").iterdir())
    assert len(previous) == 1 and (previous[0] / "report.json").is_file()
    kept = [p for p in layout.iterdir() if p.name.startswith("scores.") and p.suffix == ".json" and p != json_file]
    assert len(kept) == 1 and json.loads(kept[0].read_text())["created"] == first["created"]


def test_report_folder_inside_images_is_not_scored(layout, capsys):
    images = layout / "generated_images"
    args = ["score", "--refs", layout / "refs", "--images", images, "--pack", PACK_DIR, "--out", images / "report",
            "--cache-dir", layout / "cache", "--quiet", "--json", layout / "r.json"]
    assert run_cli(args, capsys)[0] == 0
    assert run_cli(args, capsys)[0] == 0
    report = json.loads((layout / "r.json").read_text())
    assert not any(i["path"].startswith("report/") for i in report["images"])
    assert sum(g["n_images"] for g in report["groups"]) == 7


def test_configuration_errors_exit_2_with_a_clear_message(layout, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LIKENESS_MODELS_DIR", raising=False)
    code, _, err = run_cli(["score", "--refs", layout / "refs", "--images", layout / "generated_images", "--pack", "buffalo_l"], capsys)
    assert code == 2 and "buffalo_l" in err and ".insightface" in err
    assert "--pack" in err and "--download" in err  # the CLI's own options

    blank = layout / "blank_refs"
    blank.mkdir()
    Image.new("RGB", (64, 64)).save(blank / "nothing.png")
    code, _, err = run_cli(["score", "--refs", blank, "--images", layout / "generated_images", "--pack", PACK_DIR, "--quiet", "--no-cache"], capsys)
    assert code == 2 and "nothing.png" in err and "no face" in err

    code, _, err = run_cli(["score", "--refs", layout / "missing", "--images", layout, "--pack", PACK_DIR], capsys)
    assert code == 2 and "does not exist" in err


def test_group_by_lora_from_image_metadata(tmp_path, capsys):
    from PIL import PngImagePlugin

    refs = PEOPLE / "lfw_colin_powell"
    folder = tmp_path / "outputs"
    folder.mkdir()
    photos = sorted((PEOPLE / "lfw_colin_powell").iterdir())
    for i, (photo, epoch) in enumerate(zip(photos[:4], (1, 1, 2, 2))):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", f"photo of cpw man <lora:cpw-{epoch:06d}:0.8>\nSteps: 20, Seed: {1236 + i}")
        Image.open(photo).save(folder / f"{i:05d}.png", pnginfo=info)
    code, _, _ = run_cli(["score", "--refs", refs, "--images", folder, "--pack", PACK_DIR, "--group-by", "lora",
                          "--json", tmp_path / "r.json", "--quiet", "--no-cache"], capsys)
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert [(g["label"], g["n_images"], g["epoch"], g["strength"]) for g in report["groups"]] == [
        ("cpw e1 @0.8", 2, 1, 0.8), ("cpw e2 @0.8", 2, 2, 0.8)]
    assert all(i["memorised"] for i in report["images"])  # they are the reference photos themselves


def test_console_script_prints_json_to_stdout(layout):
    script = Path(sys.executable).with_name("likeness")
    assert script.exists(), "run `pip install -e .` first: the likeness console script is missing"
    completed = subprocess.run(
        [str(script), "score", "--refs", str(layout / "refs"), "--images", str(layout / "generated_images" / "exp_e20"),
         "--pack", str(PACK_DIR), "--json", "-", "--no-cache", "--group-by", "none"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    jsonschema.validate(report, SCHEMA)
    assert report["groups"][0]["label"] == "all" and report["groups"][0]["n_faces"] == 3


def test_doctor_reports_packs_and_providers(capsys, monkeypatch):
    monkeypatch.setenv("LIKENESS_MODELS_DIR", str(PACK_DIR.parent))
    code, stdout, _ = run_cli(["doctor", "--pack", "likeness_test"], capsys)
    assert "likeness_test: det_500m.onnx + mobilefacenet_128d.onnx" in stdout
    assert "CPUExecutionProvider" in stdout and "numpy" in stdout
    assert code == 0, stdout


@pytest.mark.parametrize("gpus", [0, 1])
def test_doctor_notes_a_cpu_onnxruntime_only_where_a_gpu_is_usable(capsys, monkeypatch, gpus):
    """A +cu130 torch build says nothing about the machine: the note was printed on machines without a GPU."""
    from lora_likeness import dependencies

    monkeypatch.setenv("LIKENESS_MODELS_DIR", str(PACK_DIR.parent))
    monkeypatch.setattr(dependencies, "torch_kind", lambda paths=None: "cuda")
    monkeypatch.setattr(dependencies, "cuda_device_count", lambda: gpus)
    code, stdout, _ = run_cli(["doctor", "--pack", "likeness_test"], capsys)
    assert f"CUDA devices             {gpus or 'none usable'}" in stdout
    assert ("onnxruntime has no CUDA provider: face models run on CPU" in stdout) == bool(gpus)


def _python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (nothing imported yet); it prints one JSON line."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_VERBOSITY") and k not in ("PYTHONWARNINGS", "HF_HUB_DISABLE_PROGRESS_BARS")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_quiet_third_party_lets_errors_through_and_restores_everything():
    """The CLI's quieting (lora_likeness.quiet): libraries imported inside it are turned down at import, their
    errors and unknown warnings still show, and on leaving it everything is as before."""
    pytest.importorskip("transformers", reason="what is quieted is transformers' logging: the scoring-only install (.ci/oldest_pins.sh) has none")
    result = _python("""if True:
        import json, logging, sys, warnings
        from lora_likeness.quiet import quiet_third_party
        with quiet_third_party():
            import importlib.util
            importlib.util.find_spec("transformers")  # an "is it installed?" check must not use the hook up
            import transformers
            from transformers.utils import logging as tlog
            log = logging.getLogger("transformers.models.clip")
            inside = [log.isEnabledFor(logging.WARNING), log.isEnabledFor(logging.ERROR), tlog.is_progress_bar_enabled()]
            with warnings.catch_warnings(record=True) as seen:
                warnings.warn("Specified provider 'CUDAExecutionProvider' is not in available provider names.", UserWarning)
                warnings.warn("something real", UserWarning)
        after = [log.isEnabledFor(logging.WARNING), tlog.is_progress_bar_enabled(), all(type(f).__name__ != "_AfterImport" for f in sys.meta_path)]
        print(json.dumps({"inside": inside, "shown": [str(w.message) for w in seen], "after": after}))
    """)
    assert result["inside"] == [False, True, False]
    assert result["shown"] == ["something real"]
    assert result["after"] == [True, True, True]


def test_importing_likeness_leaves_a_hosts_libraries_alone():
    """ComfyUI / A1111 import lora_likeness (and our CLI module): their transformers stays as loud as they set it."""
    pytest.importorskip("transformers", reason="what is quieted is transformers' logging: the scoring-only install (.ci/oldest_pins.sh) has none")
    result = _python("""if True:
        import json, logging, sys
        import lora_likeness, lora_likeness.cli, lora_likeness.quiet
        import transformers
        from transformers.utils import logging as tlog
        print(json.dumps({"level": logging.getLogger("transformers").getEffectiveLevel(), "bars": tlog.is_progress_bar_enabled()}))
    """)
    assert result == {"level": logging.WARNING, "bars": True}
