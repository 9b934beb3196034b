"""The dataset ``likeness prepare`` writes, read by kohya-ss/sd-scripts' own loader.

Runs only with ``SD_SCRIPTS_DIR`` set to an sd-scripts checkout; its interpreter is
``SD_SCRIPTS_PYTHON``, else the checkout's ``venv``, else the one running pytest. A small script
(ours) loads ``dataset.toml`` through sd-scripts' ``ConfigSanitizer`` / ``BlueprintGenerator`` /
``generate_dataset_group_by_blueprint`` and its folder-name parser, and prints what sd-scripts
will train on: images, repeats, captions, regularisation images.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from likeness_assets import FACES, PEOPLE
from lora_likeness.dataset import PrepareConfig, prepare_dataset

pytestmark = pytest.mark.integration

CHECK = r'''
import argparse, json, sys
sys.path.insert(0, sys.argv[1])
from library import config_util
out = sys.argv[2]
user = config_util.load_user_config(out + "/dataset.toml")
blueprint = config_util.BlueprintGenerator(config_util.ConfigSanitizer(True, True, False, True)).generate(user, argparse.Namespace())
group, _ = config_util.generate_dataset_group_by_blueprint(blueprint.dataset_group)
dataset = group.datasets[0]
print("JSON:" + json.dumps({
    "num_train_images": dataset.num_train_images,
    "num_reg_images": dataset.num_reg_images,
    "resolution": [dataset.width, dataset.height],
    "subsets": [{"image_dir": s.image_dir, "num_repeats": s.num_repeats, "class_tokens": s.class_tokens,
                 "keep_tokens": s.keep_tokens, "is_reg": s.is_reg, "caption_extension": s.caption_extension} for s in dataset.subsets],
    "images": {path: [info.caption, info.num_repeats, info.is_reg] for path, info in dataset.image_data.items()},
    "by_folder_names": config_util.generate_dreambooth_subsets_config_by_subdirs(out + "/img", out + "/reg"),
}))
'''


def sd_scripts_python(checkout: Path) -> str:
    explicit = os.environ.get("SD_SCRIPTS_PYTHON")
    if explicit:
        return explicit
    for venv in (checkout / "venv", checkout / ".venv"):
        for name in ("bin/python", "Scripts/python.exe"):
            if (venv / name).is_file():
                return str(venv / name)
    return sys.executable


def test_sd_scripts_reads_the_prepared_dataset(engine, tmp_path):
    checkout = os.environ.get("SD_SCRIPTS_DIR")
    if not checkout:
        pytest.skip("SD_SCRIPTS_DIR is not set")
    checkout = Path(checkout)
    photos, reg = tmp_path / "photos", tmp_path / "reg"
    photos.mkdir()
    reg.mkdir()
    for name in ("obama_01_official_portrait.jpg", "obama_02_speech.jpg", "obama_04_whitehouse_seal.jpg"):
        shutil.copy(PEOPLE / "obama" / name, photos / name)
    shutil.copy(FACES / "others" / "kit_harington_01.jpg", reg / "r1.jpg")
    shutil.copy(FACES / "others" / "lfw_Al_Pacino_0001.jpg", reg / "r2.jpg")
    out = tmp_path / "out"
    result = prepare_dataset(engine, PrepareConfig(photos=photos, out=out, trigger="ohwx", class_word="man", size=512,
                                                   reg_dir=reg, use_cache=False))
    assert len(result.kept) == 3
    script = tmp_path / "check.py"
    script.write_text(CHECK)
    done = subprocess.run([sd_scripts_python(checkout), str(script), str(checkout), str(out)], check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("JSON:"))[5:])
    assert seen["num_train_images"] == len(result.kept) * result.repeats
    assert seen["num_reg_images"] == result.reg_images == 2
    assert seen["resolution"] == [512, 512]
    train = [s for s in seen["subsets"] if not s["is_reg"]]
    assert [(s["num_repeats"], s["class_tokens"], s["caption_extension"]) for s in train] == [(result.repeats, "ohwx man", ".txt")]
    for item in result.kept:
        caption, repeats, is_reg = seen["images"][str((out / item.output).resolve())]
        assert (caption, repeats, is_reg) == (item.caption, result.repeats, False)
    by_names = {(Path(s["image_dir"]).name, s["num_repeats"], s["class_tokens"], s["is_reg"]) for s in seen["by_folder_names"]}
    assert by_names == {(f"{result.repeats}_ohwx man", result.repeats, "ohwx man", False), ("1_man", 1, "man", True)}
