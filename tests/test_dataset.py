"""``likeness prepare`` end to end on real photos (../shared/faces) with the real face pack.

A mixed folder is built in a temporary directory: Obama's photos, group photos, other people,
photos derived from Obama's (blurred, darkened, a re-encoded copy) and broken files. The dataset
must hold exactly Obama's usable photos, every other file must be rejected with its reason, and
the output must follow sd-scripts' conventions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the copy pip vendors
    from pip._vendor import tomli as tomllib

from likeness_assets import FACES, PACK_DIR, PEOPLE
from lora_likeness.dataset import IdentitySpec, PrepareConfig, prepare_dataset
from lora_likeness.dataset.kohya import KOHYA_IMAGE_EXTENSIONS, parse_folder_name, repeats_for
from lora_likeness.images import decode_image
from lora_likeness.progress import Cancelled, Progress
from lora_likeness.scoring import normalize

KEPT_ALWAYS = {
    "obama/obama_01_official_portrait.webp",  # converted to WebP
    "obama/obama_04_whitehouse_seal.jpg",  # pixels stored rotated, EXIF orientation 6
    "group/obama_partial_face_crop.jpg",
    "group/obama_and_biden.jpg",  # Biden is cropped out
}
#: Each pair shows the same shot: exactly one is kept, the other is a duplicate.
DUPLICATE_PAIRS = [
    ("obama/obama_02_speech.jpg", "obama/derived_copy_of_02.jpg"),  # resized, re-encoded copy
    ("obama/obama_03_oval_office.jpg", "group/two_people.jpg"),  # the same moment, another crop
]
EXPECTED_CODES = {
    "obama/derived_blurred.jpg": "blurry",
    "obama/derived_dark.jpg": "underexposed",
    "bad/truncated.jpg": "unreadable",
    "bad/notes.jpg": "unreadable",
    "bad/empty.png": "unreadable",
    "bad/no_face.png": "no_face",
    "bad/phone.heic": "unreadable",
    "others/biden_01.jpg": "not_subject",
    "others/rose_leslie_02.jpg": "not_subject",
    "others/lfw_Al_Pacino_0001.jpg": "not_subject",
    "group/insightface_t1_group.jpg": "not_subject",
}
#: Keys sd-scripts' ConfigSanitizer accepts in each section (library/config_util.py).
SD_SCRIPTS_KEYS = {
    "general": {"shuffle_caption", "keep_tokens", "caption_extension"},
    "datasets": {"resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "subsets"},
    "subsets": {"image_dir", "num_repeats", "class_tokens", "keep_tokens", "is_reg"},
}


def build_mixed_folder(root: Path) -> Path:
    """Obama's photos + group photos + others + derived and broken files under ``root``."""
    for sub in ("obama", "group", "others", "bad"):
        (root / sub).mkdir(parents=True)
    for name in ("obama_02_speech.jpg", "obama_03_oval_office.jpg"):
        shutil.copy(PEOPLE / "obama" / name, root / "obama" / name)
    with Image.open(PEOPLE / "obama" / "obama_01_official_portrait.jpg") as image:
        image.save(root / "obama" / "obama_01_official_portrait.webp", quality=90)
    with Image.open(PEOPLE / "obama" / "obama_04_whitehouse_seal.jpg") as image:
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 clockwise to display": the pixels are stored turned left
        image.transpose(Image.Transpose.ROTATE_90).save(root / "obama" / "obama_04_whitehouse_seal.jpg", exif=exif.tobytes(), quality=95)
    for name in ("obama_and_biden.jpg", "two_people.jpg", "obama_partial_face_crop.jpg", "insightface_t1_group.jpg"):
        shutil.copy(FACES / "group_photos" / name, root / "group" / name)
    for name in ("biden_01.jpg", "rose_leslie_02.jpg", "lfw_Al_Pacino_0001.jpg"):
        shutil.copy(FACES / "others" / name, root / "others" / name)
    portrait = np.asarray(Image.open(PEOPLE / "obama" / "obama_01_official_portrait.jpg").convert("RGB"))
    # Gaussian blur of 2% of the face height (342 px): sharpness ~10 against the threshold 20.
    Image.fromarray(cv2.GaussianBlur(portrait, (0, 0), 0.02 * 342)).save(root / "obama" / "derived_blurred.jpg", quality=92)
    Image.fromarray((portrait * 0.15).astype(np.uint8)).save(root / "obama" / "derived_dark.jpg", quality=92)
    speech = Image.open(PEOPLE / "obama" / "obama_02_speech.jpg")
    speech.resize((speech.width * 7 // 10, speech.height * 7 // 10)).save(root / "obama" / "derived_copy_of_02.jpg", quality=80)
    data = (PEOPLE / "obama" / "obama_04_whitehouse_seal.jpg").read_bytes()
    (root / "bad" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "bad" / "notes.jpg").write_text("not an image")
    (root / "bad" / "empty.png").write_bytes(b"")
    (root / "bad" / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))  # a HEIC header, no image
    y, x = np.mgrid[0:300, 0:400]
    Image.fromarray(np.dstack([x % 256, y % 256, (x + y) % 256]).astype(np.uint8)).save(root / "bad" / "no_face.png")
    return root


def tree_state(root: Path) -> dict[str, tuple[str, int]]:
    """``{relative path: (sha256, mtime_ns)}`` of every file under ``root``."""
    return {
        p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def output_state(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and "previous" not in p.relative_to(out).parts}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return build_mixed_folder(tmp_path_factory.mktemp("photos") / "library")


@pytest.fixture(scope="module")
def run(engine, mixed, tmp_path_factory):
    """One run on the mixed folder (subject found as the largest identity cluster)."""
    before = tree_state(mixed)
    out = tmp_path_factory.mktemp("dataset") / "out"
    cache_dir = tmp_path_factory.mktemp("cache")
    config = PrepareConfig(photos=mixed, out=out, trigger="ohwx", class_word="man", size=512, cache_dir=cache_dir)
    result = prepare_dataset(engine, config)
    return {"result": result, "config": config, "out": out, "before": before, "cache_dir": cache_dir}


def test_mixed_folder_yields_exactly_the_subjects_photos(run, mixed):
    result = run["result"]
    kept = {k.source for k in result.kept}
    codes = {r.source: r.code for r in result.rejected}
    every_file = {p.relative_to(mixed).as_posix() for p in mixed.rglob("*") if p.is_file()}
    assert kept | set(codes) == every_file and not kept & set(codes), "each photo is either kept or rejected, once"
    assert KEPT_ALWAYS <= kept
    for original, copy in DUPLICATE_PAIRS:
        assert len({original, copy} & kept) == 1, (original, copy, kept)
        loser = copy if original in kept else original
        assert codes[loser] == "duplicate"
        assert (original if loser == copy else copy) in next(r.reason for r in result.rejected if r.source == loser)
    assert kept == KEPT_ALWAYS | {a if a in kept else b for a, b in DUPLICATE_PAIRS}
    for source, code in EXPECTED_CODES.items():
        assert codes[source] == code, (source, codes[source], next(r.reason for r in result.rejected if r.source == source))
    for rejection in result.rejected:
        assert rejection.reason and len(rejection.reason) > 10
    assert "sharpness" in next(r.reason for r in result.rejected if r.source == "obama/derived_blurred.jpg")
    heic = next(r.reason for r in result.rejected if r.source == "bad/phone.heic")
    if importlib.util.find_spec("pillow_heif") is None:
        assert "pip install pillow-heif" in heic
    assert result.n_photos == len(every_file)


def test_crops_show_the_subject_whole_and_nobody_else(run, engine):
    result, out = run["result"], run["out"]
    refs = [engine.analyze(decode_image(p)).faces[0].embedding for p in sorted((PEOPLE / "obama").iterdir())]
    obama = normalize(np.mean(refs, axis=0))
    framings = set()
    for item in result.kept:
        loaded = decode_image(out / item.output)
        assert loaded.original_size == (512, 512)
        faces = engine.analyze(loaded).faces
        similarities = [float(f.embedding @ obama) for f in faces]
        subject = faces[int(np.argmax(similarities))]
        assert max(similarities) > 0.5, item.source
        x1, y1, x2, y2 = subject.box
        assert x1 > 0 and y1 > 0 and x2 < 512 and y2 < 512, f"{item.source}: face touches the crop edge {subject.box}"
        others = [f for f, s in zip(faces, similarities) if f is not subject and f.area > 0.25 * subject.area]
        assert not others, f"{item.source}: another person's face is in the crop"
        framings.add(item.framing)
        assert item.window.padding <= run["config"].selection.max_padding + 1e-6
    assert len(framings) >= 2, "a spread of framings, not only close-ups"


def test_kohya_layout_captions_and_dataset_toml(run):
    result, out, config = run["result"], run["out"], run["config"]
    folders = sorted(p.name for p in (out / "img").iterdir())
    assert len(folders) == 1
    repeats, class_tokens = parse_folder_name(folders[0])
    assert class_tokens == "ohwx man"
    assert repeats == result.repeats == repeats_for(len(result.kept), config.target_steps, config.batch_size)
    images = sorted(p for p in (out / "img" / folders[0]).iterdir() if p.suffix != ".txt")
    assert len(images) == len(result.kept)
    for image in images:
        assert image.suffix in KOHYA_IMAGE_EXTENSIONS
        caption = image.with_suffix(".txt").read_text(encoding="utf-8")
        assert caption.endswith("\n") and caption.count("\n") == 1
        parts = caption.strip().split(", ")
        assert parts[0] == "ohwx man" and parts[1] in ("close-up", "head and shoulders", "upper body")
    toml = tomllib.loads((out / "dataset.toml").read_text(encoding="utf-8"))
    assert set(toml) == {"general", "datasets"}
    assert set(toml["general"]) <= SD_SCRIPTS_KEYS["general"]
    assert toml["general"]["caption_extension"] == ".txt" and toml["general"]["keep_tokens"] == 1
    (dataset,) = toml["datasets"]
    assert set(dataset) <= SD_SCRIPTS_KEYS["datasets"]
    assert dataset["resolution"] == 512 and dataset["batch_size"] == 1
    (subset,) = dataset["subsets"]
    assert set(subset) <= SD_SCRIPTS_KEYS["subsets"]
    assert Path(subset["image_dir"]) == (out / "img" / folders[0]).resolve()
    assert subset["num_repeats"] == repeats and subset["class_tokens"] == "ohwx man" and subset["is_reg"] is False


def test_reports_name_every_rejected_file_by_its_source_path(run, mixed):
    result, out = run["result"], run["out"]
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert {r["source"] for r in report["rejected"]} == {r.source for r in result.rejected}
    assert all(r["reason"] for r in report["rejected"])
    assert report["summary"]["kept"] == len(result.kept)
    assert report["settings"]["quality"]["min_sharpness"] == 20.0  # thresholds are stated
    page = (out / "report.html").read_text(encoding="utf-8")
    for rejection in result.rejected:
        assert rejection.source in page and rejection.code in page
    for sheet in ("contact_kept.jpg", "contact_rejected.jpg"):
        with Image.open(out / sheet) as image:
            assert image.width > 0 and image.height > 0
        assert f"src='{sheet}'" in page


def test_rerun_is_idempotent_and_never_touches_the_photos(run, engine, mixed):
    out, config = run["out"], run["config"]
    first = output_state(out)
    again = prepare_dataset(engine, config)
    assert again.unchanged and again.previous is None
    assert output_state(out) == first
    assert not (out / "previous").exists()
    assert again.timings["cache_hits"] >= again.n_photos - 4, "the second run reads faces from the cache"
    uncached = prepare_dataset(engine, dataclasses.replace(config, use_cache=False))
    assert uncached.unchanged and output_state(out) == first, "the cache changes the speed, not the dataset"
    assert tree_state(mixed) == run["before"], "source photos were modified"


def test_changed_settings_keep_the_earlier_output_in_previous(engine, mixed, tmp_path):
    out = tmp_path / "out"
    base = {"photos": mixed, "out": out, "trigger": "ohwx", "class_word": "man", "size": 512, "use_cache": False}
    first = prepare_dataset(engine, PrepareConfig(**base, repeats=3))
    before = output_state(out)
    second = prepare_dataset(engine, PrepareConfig(**base, repeats=5))
    assert not second.unchanged and second.previous is not None
    assert output_state(second.previous) == before, "the earlier output is kept whole"
    assert [p.name for p in (out / "img").iterdir()] == ["5_ohwx man"], "no stale 3_ folder left beside the new one"
    assert len(list((out / "img" / "5_ohwx man").glob("*.png"))) == len(first.kept)


def test_two_identities_label_photos_and_cover_subsets(engine, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("obama_01_official_portrait.jpg", "obama_04_whitehouse_seal.jpg"):
        shutil.copy(PEOPLE / "obama" / name, photos / name)
    shutil.copy(FACES / "others" / "biden_01.jpg", photos / "biden_01.jpg")
    shutil.copy(FACES / "group_photos" / "obama_and_biden.jpg", photos / "obama_and_biden.jpg")
    shutil.copy(FACES / "others" / "rose_leslie_02.jpg", photos / "rose_leslie_02.jpg")
    reg = tmp_path / "reg"
    reg.mkdir()
    shutil.copy(FACES / "others" / "kit_harington_01.jpg", reg / "a.jpg")
    config = PrepareConfig(
        photos=photos, out=tmp_path / "out", class_word="man", size=512, use_cache=False, reg_dir=reg,
        identities=[
            IdentitySpec("ohwxo", PEOPLE / "obama"),
            IdentitySpec("ohwxb", FACES / "others" / "biden_02.jpg"),
            IdentitySpec("ohwxj", PEOPLE / "angelina_jolie" / "angelina_jolie_01_deepface_img1.jpg", "woman"),
        ],
    )
    result = prepare_dataset(engine, config)
    labels = {k.source: set(k.identities) for k in result.kept}
    assert labels == {
        "obama_01_official_portrait.jpg": {"ohwxo"},
        "obama_04_whitehouse_seal.jpg": {"ohwxo"},
        "biden_01.jpg": {"ohwxb"},
        "obama_and_biden.jpg": {"ohwxo", "ohwxb"},
    }
    assert {r.source: r.code for r in result.rejected} == {"rose_leslie_02.jpg": "not_subject"}
    pair = next(k for k in result.kept if k.source == "obama_and_biden.jpg")
    assert pair.caption.startswith("ohwxo man, ohwxb man, ")
    assert Path(pair.output).parent.name == f"{result.repeats}_ohwxo man, ohwxb man"
    coverage = {row.identities: (row.exactly, row.at_least) for row in result.coverage}
    assert len(coverage) == 7  # 3 singles, 3 pairs, 1 triple
    assert coverage[("ohwxo",)] == (2, 3) and coverage[("ohwxb",)] == (1, 2) and coverage[("ohwxo", "ohwxb")] == (1, 1)
    empty = [" + ".join(ids) for ids, (exactly, _) in coverage.items() if exactly == 0]
    assert set(empty) == {"ohwxj", "ohwxo + ohwxj", "ohwxb + ohwxj", "ohwxo + ohwxb + ohwxj"}
    for subset in empty:
        assert any(subset in w for w in result.warnings), subset
    toml = tomllib.loads((config.out / "dataset.toml").read_text(encoding="utf-8"))
    subsets = {Path(s["image_dir"]).name: s for s in toml["datasets"][0]["subsets"]}
    assert subsets[f"{result.repeats}_ohwxo man, ohwxb man"]["keep_tokens"] == 2
    assert subsets["1_man"]["is_reg"] is True and subsets["1_man"]["num_repeats"] == 1
    (reg_image,) = (config.out / "reg" / "1_man").glob("*.png")
    assert reg_image.with_suffix(".txt").read_text(encoding="utf-8") == "man\n"
    with Image.open(reg_image) as image:
        assert image.size == (512, 512)


def test_face_boxes_choose_the_subject(engine, tmp_path):
    """An imported box on Biden's face makes him the subject, though Obama appears more often."""
    photos = tmp_path / "photos"
    photos.mkdir()
    names = {"a.jpg": PEOPLE / "obama" / "obama_01_official_portrait.jpg", "b.jpg": PEOPLE / "obama" / "obama_04_whitehouse_seal.jpg",
             "c.jpg": PEOPLE / "obama" / "obama_02_speech.jpg", "pair.jpg": FACES / "group_photos" / "obama_and_biden.jpg",
             "biden.jpg": FACES / "others" / "biden_01.jpg"}
    for name, source in names.items():
        shutil.copy(source, photos / name)
    biden = engine.analyze(decode_image(FACES / "others" / "biden_02.jpg")).faces[0].embedding
    loaded = decode_image(photos / "pair.jpg")
    faces = engine.analyze(loaded).faces
    box = max(faces, key=lambda f: float(f.embedding @ biden)).box
    width, height = loaded.original_size
    pad = 0.1 * (box[2] - box[0])  # a photo manager's box is not the detector's
    boxes = tmp_path / "markers.csv"
    boxes.write_text(
        "file\tx\ty\tw\th\tname\n"
        f"2008/pair.jpg\t{(box[0] - pad) / width:.5f}\t{(box[1] - pad) / height:.5f}\t"
        f"{(box[2] - box[0] + 2 * pad) / width:.5f}\t{(box[3] - box[1] + 2 * pad) / height:.5f}\tJoe\n"
    )
    result = prepare_dataset(engine, PrepareConfig(photos=photos, out=tmp_path / "out", trigger="ohwx", class_word="man",
                                                   size=512, use_cache=False, face_boxes=boxes))
    assert {k.source for k in result.kept} == {"pair.jpg", "biden.jpg"}
    assert {r.source: r.code for r in result.rejected} == {"a.jpg": "not_subject", "b.jpg": "not_subject", "c.jpg": "not_subject"}
    pair = next(k for k in result.kept if k.source == "pair.jpg")
    assert abs(pair.faces["ohwx"][0] - float(box[0])) < 2
    assert pair.from_box and not next(k for k in result.kept if k.source == "biden.jpg").from_box


class CancelAfter(Progress):
    def __init__(self, photos: int) -> None:
        super().__init__()
        self.limit = photos

    def advance(self, count: int = 1, detail: str | None = None) -> None:
        super().advance(count, detail)
        if self.description == "photos" and self.done >= self.limit:
            self.cancel()


def test_cancel_between_photos_leaves_the_output_alone(engine, mixed, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset.toml").write_text("# the user's earlier dataset\n")
    with pytest.raises(Cancelled):
        prepare_dataset(engine, PrepareConfig(photos=mixed, out=out, trigger="ohwx", class_word="man", use_cache=False), CancelAfter(2))
    assert sorted(p.name for p in out.iterdir()) == ["dataset.toml"]
    assert (out / "dataset.toml").read_text() == "# the user's earlier dataset\n"


def test_cli_prepare(tmp_path, capsys):
    from lora_likeness.cli import main
    from test_dataset_units import make_tagger

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("obama_01_official_portrait.jpg", "obama_04_whitehouse_seal.jpg"):
        shutil.copy(PEOPLE / "obama" / name, photos / name)
    tagger = tmp_path / "wd14"
    make_tagger(tagger, [0.9, 0.2, 0.7])
    (tagger / "selected_tags.csv").write_text("tag_id,name,category,count\n1,suit,0,1\n2,hat,0,1\n3,necktie,0,1\n")
    out = photos / "dataset"  # inside the photos folder: must not read its own crops on a re-run
    common = ["prepare", "--photos", str(photos), "--pack", str(PACK_DIR), "--providers", "cpu", "-q", "--no-cache"]
    options = ["--out", str(out), "--trigger", "ohwx", "--class", "man", "--size", "512", "--keep-aspect",
               "--framings", "close-up,half-body", "--format", "jpg", "--repeats", "7", "--tagger", str(tagger)]
    assert main([*common, *options]) == 0
    printed = capsys.readouterr().out
    assert "2 kept" in printed and "dataset.toml" in printed
    written = sorted((out / "img" / "7_ohwx man").glob("*.jpg"))
    assert len(written) == 2
    for path in written:
        with Image.open(path) as image:
            assert abs(image.width * image.height / 512**2 - 1) < 0.1  # about size x size pixels, any aspect
        caption = path.with_suffix(".txt").read_text(encoding="utf-8").strip()
        assert caption.split(", ")[0] == "ohwx man" and caption.endswith(", suit, necktie")
    assert main([*common, *options]) == 0
    assert "2 kept, 0 rejected of 2 photos" in capsys.readouterr().out and not (out / "previous").exists()
    assert main([*common, "--out", str(tmp_path / "o2"), "--class", "man"]) == 2  # no --trigger
    assert "--trigger is required" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "o3"), "--trigger", "ohwx", "--subject", str(FACES / "others" / "biden_02.jpg")]) == 1


@pytest.mark.parametrize(("options", "size", "buckets", "title"), [
    (["--family", "sdxl"], 1024, (512, 2048), "SDXL"),
    ([], 512, (256, 1024), "SD1.x"),  # no --family or --base: SD1.x
])
def test_cli_prepare_for_the_models_family(tmp_path, capsys, options, size, buckets, title):
    """An SDXL dataset: 1024 px crops and SDXL's resolution and bucket limits in dataset.toml (what
    TrainConfig.for_family gives an SDXL base, so both trainers read the same); SD1.x keeps 512 px, 256-1024."""
    from lora_likeness.cli import main
    from lora_likeness.families import FAMILIES

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(PEOPLE / "obama" / "obama_01_official_portrait.jpg", photos / "a.jpg")
    out = tmp_path / "out"
    assert main(["prepare", "--photos", str(photos), "--out", str(out), "--trigger", "ohwx", "--class", "man", "--pack", str(PACK_DIR),
                 "--providers", "cpu", "-q", "--no-cache", "--framings", "close-up", *options]) == 0
    assert f"for {title}: {size} px crops, dataset.toml resolution {size}, buckets {buckets[0]}-{buckets[1]}" in capsys.readouterr().out
    (crop,) = sorted((out / "img").glob("*/*.png"))
    with Image.open(crop) as image:
        assert image.size == (size, size)
    (dataset,) = tomllib.loads((out / "dataset.toml").read_text(encoding="utf-8"))["datasets"]
    assert (dataset["resolution"], dataset["min_bucket_reso"], dataset["max_bucket_reso"], dataset["bucket_reso_steps"]) == (size, *buckets, 64)
    family = FAMILIES["sdxl" if options else "sd1"].defaults
    assert (family.resolution, family.min_bucket_reso, family.max_bucket_reso) == (size, *buckets)
    assert json.loads((out / "report.json").read_text(encoding="utf-8"))["settings"]["family"] == ("sdxl" if options else "sd1")


def test_hosts_can_pass_plain_values(engine, tmp_path):
    """What the ComfyUI node / A1111 tab do: strings and dicts in, a result with plain data out."""
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(PEOPLE / "obama" / "obama_04_whitehouse_seal.jpg", photos / "a.jpg")
    config = PrepareConfig(photos=str(photos), out=str(tmp_path / "out"), trigger="ohwx", class_word="man", size=768,
                           quality={"min_face_px": 600}, selection={"max_padding": 0.2}, use_cache=False)
    result = prepare_dataset(engine, config)
    assert [r.code for r in result.rejected] == ["face_too_small"] and "600 px" in result.rejected[0].reason
    data = json.loads(json.dumps(result.as_dict()))
    assert data["settings"]["quality"]["min_face_px"] == 600 and data["settings"]["selection"]["max_padding"] == 0.2
    assert data["summary"]["kept"] == 0 and result.files["report.html"].is_file()


# --- what a first user and a hostile tester broke (issue 12) -----------------------------------


def _unwrapped(text: str) -> str:
    """Terminal output with rich's line wrapping undone."""
    return " ".join(text.split())


def _prepare_cli(photos: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", "--photos", str(photos), "--out", str(out), "--trigger", "ohwx", "--class", "man", "--size", "512",
            "--pack", str(PACK_DIR), "--providers", "cpu", "-q", "--no-cache", *extra]


def test_cli_prepare_without_photos_says_so_and_gives_no_train_hint(tmp_path, capsys):
    from lora_likeness.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(_prepare_cli(empty, tmp_path / "o1")) == 2
    printed = capsys.readouterr()
    assert "holds no photo: no image file" in _unwrapped(printed.err) and "it is empty" in _unwrapped(printed.err)
    assert "train with" not in printed.out and not (tmp_path / "o1" / "dataset.toml").exists()

    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("IMG_0001.CR2", "IMG_0002.CR2", "notes.txt", "IMG_0003.CR2"):
        (raw / name).write_bytes(b"not a photo Pillow reads")
    assert main(_prepare_cli(raw, tmp_path / "o2")) == 2
    err = _unwrapped(capsys.readouterr().err)
    assert "4 other file(s) (IMG_0001.CR2, IMG_0002.CR2, IMG_0003.CR2, ...)" in err and "convert photos to JPEG or PNG" in err


def test_cli_prepare_nothing_kept_says_why_without_a_train_hint(tmp_path, capsys):
    from lora_likeness.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("obama_01_official_portrait.jpg", "obama_04_whitehouse_seal.jpg"):
        shutil.copy(PEOPLE / "obama" / name, photos / name)
    out = tmp_path / "out"
    assert main(_prepare_cli(photos, out, "--subject", str(FACES / "others" / "biden_02.jpg"))) == 1
    printed = capsys.readouterr()
    err = _unwrapped(printed.err)
    assert "no photo was kept of 2: 2 not_subject: the subject" in err and str(out / "report.html") in err
    assert "train with" not in printed.out and "warning: no photo was kept" not in printed.out  # said once, as the error
    # The rejections are reported; no dataset.toml without a subset (it would only fail in the trainer).
    assert (out / "report.html").is_file() and not (out / "dataset.toml").exists()
    assert json.loads((out / "report.json").read_text())["warnings"][0].startswith("no photo was kept of 2: 2 not_subject")


def test_cli_prepare_refuses_an_unwritable_out_before_any_work(tmp_path, capsys, monkeypatch):
    """Tests run as root, who may write anywhere: a file in the way is a real unwritable --out, and a
    read-only folder is simulated by ``os.access`` (the check prepare makes). A real read-only folder,
    for a process without root's capabilities, gives the same message (setpriv --bounding-set=-all)."""
    from lora_likeness.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(PEOPLE / "obama" / "obama_01_official_portrait.jpg", photos / "a.jpg")
    blocker = tmp_path / "a-file"
    blocker.write_text("the user's file\n")
    assert main(_prepare_cli(photos, blocker / "dataset")) == 2
    assert f"{blocker} is a file, not a folder" in _unwrapped(capsys.readouterr().err)
    assert main(_prepare_cli(photos, blocker)) == 2
    assert f"--out {blocker} is a file, not a folder" in _unwrapped(capsys.readouterr().err)
    assert blocker.read_text() == "the user's file\n"

    read_only = tmp_path / "read-only"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == read_only and mode & os.W_OK else real_access(path, mode, **kw))
    assert main(_prepare_cli(photos, read_only / "dataset")) == 2
    assert f"--out {read_only / 'dataset'}: cannot write there: {read_only} is not writable" in _unwrapped(capsys.readouterr().err)
    assert list(read_only.iterdir()) == []


def _rgba(path: Path, alpha: np.ndarray) -> Path:
    with Image.open(PEOPLE / "obama" / "obama_01_official_portrait.jpg") as image:
        rgb = np.asarray(image.convert("RGB"))
    Image.fromarray(np.dstack([rgb, np.broadcast_to(alpha, rgb.shape[:2]).astype(np.uint8)]), "RGBA").save(path)
    return path


def test_transparent_photos_are_rejected_or_laid_on_grey(engine, tmp_path):
    """A photo saved half-transparent is rejected (its colours are washed out on any background); a
    cut-out (transparent background, opaque person) is kept on a neutral grey, with a warning."""
    photos = tmp_path / "photos"
    photos.mkdir()
    _rgba(photos / "half_transparent.png", np.full((1, 1), 128))
    with Image.open(PEOPLE / "obama" / "obama_01_official_portrait.jpg") as image:
        width, height = image.size
    y, x = np.mgrid[0:height, 0:width]
    head = ((x - 494) / 180) ** 2 + ((y - 260) / 240) ** 2 <= 1  # the face is at x 378-610, y 84-426
    _rgba(photos / "cut_out.png", np.where(head, 255, 0))
    result = prepare_dataset(engine, PrepareConfig(photos=photos, out=tmp_path / "out", trigger="ohwx", class_word="man", size=512,
                                                   framings=("close-up",), max_images=5, use_cache=False))
    assert [(r.source, r.code) for r in result.rejected] == [("half_transparent.png", "half_transparent")]
    assert "100% of the photo is half-transparent" in result.rejected[0].reason
    assert [k.source for k in result.kept] == ["cut_out.png"]
    assert any("1 kept photo(s) have transparent parts (e.g. cut_out.png)" in w and "neutral grey" in w for w in result.warnings)
    with Image.open(tmp_path / "out" / result.kept[0].output) as crop:
        corner = np.asarray(crop.convert("RGB"))[:8, :8].reshape(-1, 3)
    assert np.abs(corner.astype(int) - 128).max() <= 3  # the transparent surround is grey, not white
