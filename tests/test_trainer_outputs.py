"""Other trainers' checkpoint and sample names (no face model): steps, epochs, prompts, seeds, order."""

from __future__ import annotations

import json

import pytest
from lora_likeness.checkpoints import list_runs
from lora_likeness.labels import checkpoint_step, group_sort_key, parse_kohya_name, step_group
from lora_likeness.steps import nearest_checkpoint
from lora_likeness.trainer_outputs import (
    SampleLabel,
    parse_checkpoint_stem,
    parse_sample_path,
    progress_from_metadata,
    sample_label,
    seed_from_metadata,
)
from trainer_layouts import LAYOUTS, STEPS, save_as, write_lora

# Names built with each trainer's own format strings (see lora_likeness.trainer_outputs for the functions).
SAMPLE_NAMES = {
    # sd-scripts train_util.sample_image_inference: f"{output_name}_{num_suffix}_{i:02d}_{ts_str}{seed_suffix}.png"
    "jx_face_000500_01_20261207101500_42.png": SampleLabel(500, None, 1, 42, "sd-scripts"),
    "jx_face_e000003_00_20261207101500.png": SampleLabel(None, 3, 0, None, "sd-scripts"),
    "001200_02_20261207101500_7.png": SampleLabel(1200, None, 2, 7, "sd-scripts"),  # no --output_name
    # musubi-tuner trainer_base.sample_image_inference + save_images_grid(create_subdir=False): "_000" frame
    "jx_face_000750_00_20261207101500_42_000.png": SampleLabel(750, None, 0, 42, "musubi-tuner"),
    # ai-toolkit BaseSDTrainProcess.sample: f"[time]_{_{step:09d}}_[count]"
    "1765102500000__000000250_3.jpg": SampleLabel(250, None, 3, None, "ai-toolkit"),
    # OneTrainer GenericTrainer.__sample_loop: "{i} - {prompt}/{ts}-training-sample-{step}-{epoch}-{epoch_step}"
    "1 - photo of sks man/2026-12-07_10-01-00-training-sample-1000-2-200.png": SampleLabel(1000, 2, 1, None, "onetrainer"),
    "custom/2026-12-07_10-01-00-training-sample-40-0-40.png": SampleLabel(40, 0, None, None, "onetrainer"),
    # a ComfyUI SaveImage prefix such as "samples/step_500/ComfyUI"
    "step_500/ComfyUI_00001_.png": SampleLabel(500, None, None, None, "folder"),
}


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_names_of_each_trainer(name):
    assert parse_sample_path(name) == SAMPLE_NAMES[name]


def test_names_that_say_no_step():
    for name in ("photo.png", "jx_face_00_1.png", "ComfyUI_00012_.png", "2026-12-07 portrait.jpg"):
        assert parse_sample_path(name) is None
    assert sample_label("ComfyUI_00012_.png").label == "unknown step"


@pytest.mark.parametrize(("stem", "expected"), [
    ("jx-000010", ("jx", 10, None)),  # sd-scripts EPOCH_FILE_NAME
    ("jx-step00000500", ("jx", None, 500)),  # sd-scripts / musubi-tuner / FluxTrainer STEP_FILE_NAME
    ("my_job_000000250", ("my_job", None, 250)),  # ai-toolkit f"{job}_{step:09d}"
    ("2026-12-07_11-00-00-save-500-1-100", ("onetrainer", 1, 500)),  # OneTrainer __save
    ("face2026-12-07_11-00-00-backup-900-2-100", ("face", 2, 900)),  # OneTrainer __backup with a prefix
    ("jx", ("jx", None, None)),
    ("jx_2024", ("jx_2024", None, None)),  # four digits are part of a name, not a step
])
def test_checkpoint_stems(stem, expected):
    parsed = parse_checkpoint_stem(stem)
    assert (parsed.run, parsed.epoch, parsed.step) == expected
    assert parse_kohya_name(stem + ".safetensors") == expected


def test_progress_from_metadata():
    assert progress_from_metadata({"ss_epoch": "3", "ss_steps": "1500"}) == (3, 1500)
    assert progress_from_metadata({"training_info": json.dumps({"step": 250, "epoch": 1})}) == (1, 250)
    assert progress_from_metadata({"training_info": "not json"}) == (None, None)
    assert progress_from_metadata({}) == (None, None)


def test_seed_from_metadata():
    a1111 = "photo of sks man <lora:jx-000010:0.8>\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Seed: 1234, Size: 512x512"
    assert seed_from_metadata({"parameters": a1111}) == 1234
    graph = {"3": {"class_type": "KSampler", "inputs": {"seed": 77, "steps": 20}}}
    assert seed_from_metadata({"prompt": json.dumps(graph)}) == 77
    graph["4"] = {"class_type": "KSampler", "inputs": {"seed": 78}}
    assert seed_from_metadata({"prompt": json.dumps(graph)}) is None  # two samplers: which seed is unknowable
    assert seed_from_metadata({}) is None


def test_checkpoints_of_each_trainer_by_step(tmp_path):
    for name, make in LAYOUTS.items():
        make(tmp_path / name)
    runs = {key: [c.label for c in items] for key, items in list_runs(tmp_path).items()}
    # sd-scripts: step files labelled by step although their metadata records an epoch too; final last
    assert runs["sd-scripts/output/jx_face"] == ["step 500", "step 1000", "final (e3)"]
    assert runs["ai-toolkit/output/jx_face/jx_face"] == ["step 500", "step 1000"]
    assert runs["onetrainer/workspace/save/onetrainer"] == ["step 500", "step 1000"]
    # likeness sweep compares one run with the same labels, in step order
    from lora_likeness.checkpoints import sweep_checkpoints

    assert [c.label for c in sweep_checkpoints(tmp_path / "ai-toolkit" / "output", base=None)] == ["step 500", "step 1000"]


def test_epoch_files_carry_their_step_from_metadata(tmp_path):
    write_lora(tmp_path / "jx-000002.safetensors", {"ss_epoch": "2", "ss_steps": "800"})
    write_lora(tmp_path / "jx-000001.safetensors", {"ss_epoch": "1", "ss_steps": "400"})
    checkpoints = list_runs(tmp_path)["jx"]
    assert [(c.label, c.epoch, c.step) for c in checkpoints] == [("e1", 1, 400), ("e2", 2, 800)]
    assert checkpoint_step(tmp_path / "jx-000002.safetensors") == 800
    assert nearest_checkpoint(700, None, checkpoints).label == "e2"
    assert nearest_checkpoint(None, 1, checkpoints).label == "e1"
    assert nearest_checkpoint(None, None, checkpoints) is None


def test_step_groups_sort_by_step_not_by_name(tmp_path):
    names = ["jx_001000_00_20261207101500_42.png", "jx_000250_00_20261207101500_42.png",
             "jx_e000001_00_20261207101500_42.png", "jx_000500_00_20261207101500_42.png", "other.png"]
    groups = [step_group(tmp_path / name, tmp_path) for name in names]
    ordered = [label for label, info in sorted(groups, key=lambda g: group_sort_key(*g))]
    assert ordered == ["step 250", "step 500", "step 1000", "epoch 1", "unknown step"]


def test_seed_read_from_png_metadata_when_the_name_has_none(tmp_path):
    parameters = "photo of sks man\nSteps: 20, Seed: 99, Size: 512x512"
    path = save_as(_photo(), tmp_path / "step_500" / "a.png", {"parameters": parameters})
    label, info = step_group(path, tmp_path)
    assert (label, info) == ("step 500", {"step": 500, "epoch": None})
    from lora_likeness.labels import step_label

    assert step_label(path, tmp_path).seed == 99


def _photo():
    from trainer_layouts import OTHER_SAMPLES

    return OTHER_SAMPLES[0]


def test_every_layout_gives_every_step(tmp_path):
    for name, make in LAYOUTS.items():
        samples = make(tmp_path / name)
        found = sorted({sample_label(p.relative_to(samples).as_posix()).step for p in samples.rglob("*.*")
                        if not any(part.startswith(".") for part in p.relative_to(samples).parts)})
        assert found == STEPS, name


def test_end_of_epoch_samples_go_on_the_step_axis_from_the_checkpoints(tmp_path):
    """sd-scripts names a sample made at an epoch's end by the epoch only (NAME_e000002_…); the epoch checkpoint
    saved then records the step (ss_epoch/ss_steps), so both kinds of sample share one step axis."""
    from lora_likeness.pipeline import image_groups
    from lora_likeness.steps import epoch_steps, samples_checkpoints

    output = tmp_path / "output"
    samples = output / "sample"
    names = ["jx_000300_00_20261207101500_42.png", "jx_e000001_00_20261207101500_42.png",
             "jx_e000002_00_20261207101500_42.png", "jx_000500_00_20261207101500_42.png"]
    for name in names:
        save_as(_photo(), samples / name)
    write_lora(output / "jx-000001.safetensors", {"ss_epoch": "1", "ss_steps": "400"})
    write_lora(output / "jx-step00000300.safetensors", {"ss_epoch": "1", "ss_steps": "300"})  # mid-epoch: not an end
    write_lora(output / "jx.safetensors", {"ss_epoch": "2", "ss_steps": "800"})
    checkpoints = samples_checkpoints(samples)
    assert epoch_steps(checkpoints) == {1: 400, 2: 800}
    groups = image_groups([samples / n for n in names], samples, "step", epoch_steps(checkpoints))
    ordered = sorted(groups, key=lambda g: group_sort_key(*g))
    assert ordered == [("step 300", {"step": 300, "epoch": None}), ("step 400", {"step": 400, "epoch": 1}),
                       ("step 500", {"step": 500, "epoch": None}), ("step 800", {"step": 800, "epoch": 2})]
    # without checkpoints they stay by epoch, after the stepped ones
    assert [g[0] for g in sorted(image_groups([samples / n for n in names], samples, "step"), key=lambda g: group_sort_key(*g))] == [
        "step 300", "step 500", "epoch 1", "epoch 2"]


def test_trend_follows_the_best_cells_strength_in_a_grid_of_epochs_by_strengths():
    from lora_likeness.recommend import cells_from_records, recommend
    from lora_likeness.steps import _trend

    means = {("e1", 0.5): 0.1, ("e1", 1.0): 0.3, ("e2", 0.5): 0.2, ("e2", 1.0): 0.8, ("e3", 0.5): 0.75, ("e3", 1.0): 0.5}
    records = [{"checkpoint": c, "strength": w, "order": int(c[1]), "score": m + d, "key": k}
               for (c, w), m in means.items() for k, d in enumerate((-0.01, 0.0, 0.01))]
    recommendation = recommend(cells_from_records(records))
    assert recommendation.best.cell.checkpoint == "e2" and recommendation.best.cell.strength == 1.0
    lines, falling, since = _trend(recommendation, patience=1, unit="checkpoints")
    # one checkpoint after e2 at strength 1 (e3 @ 1: 0.5, below e2's CI); e3 @ 0.5 (0.75) is another line
    assert since == 1 and falling and lines[0].endswith("no gain over the last 1 checkpoints")
