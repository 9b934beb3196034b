"""Pure parts of dataset preparation: pose, quality filters, hashes, crop geometry, identities,
coverage, Kohya names and dataset.toml, face-box import, captions and the WD14 tagger adapter."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the copy pip vendors
    from pip._vendor import tomli as tomllib

from lora_likeness.dataset.boxes import FaceBoxError, iou, load_face_boxes, match_boxes
from lora_likeness.dataset.captions import WD14Tagger, build_caption
from lora_likeness.dataset.config import PrepareConfig, PrepareConfigError, QualityThresholds, parse_identity
from lora_likeness.dataset.framing import CropWindow, output_size, plan_window, protected_box, render_crop
from lora_likeness.dataset.identity import assign_faces, coverage_matrix, find_clusters, outliers
from lora_likeness.dataset.kohya import Subset, dataset_toml, parse_folder_name, repeats_for, steps_per_epoch, subset_folder_name
from lora_likeness.dataset.quality import FaceMeasures, face_problem, hamming, head_pose, perceptual_hash

FRONTAL = np.array([[40.0, 50.0], [80.0, 50.0], [60.0, 73.2], [44.0, 90.0], [76.0, 90.0]])  # nose at 0.58 of eyes->mouth


def rotate(points: np.ndarray, degrees: float, centre=(60.0, 70.0)) -> np.ndarray:
    angle = math.radians(degrees)
    matrix = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return (points - centre) @ matrix.T + centre


# ---- pose and quality -------------------------------------------------------------------------


def test_head_pose_frontal_turned_tilted_and_rolled():
    yaw, pitch, roll = head_pose(FRONTAL)
    assert abs(yaw) < 1e-6 and abs(pitch) < 0.5 and abs(roll) < 1e-6
    turned = FRONTAL.copy()
    turned[2, 0] = 80.0  # nose straight below the right eye: atan(1) = 45 degrees
    assert head_pose(turned)[0] == pytest.approx(45.0)
    profile = FRONTAL.copy()
    profile[2, 0] = 100.0  # nose beyond the eye: atan(2) = 63 degrees
    assert head_pose(profile)[0] == pytest.approx(math.degrees(math.atan(2.0)))
    rolled = head_pose(rotate(turned, 30.0))
    assert rolled[2] == pytest.approx(30.0) and rolled[0] == pytest.approx(45.0)  # roll does not change yaw
    looking_down = FRONTAL.copy()
    looking_down[2, 1] = 50.0 + 40.0 * 1.2  # nose below the mouth line
    assert head_pose(looking_down)[1] == pytest.approx(math.degrees(math.atan((1.2 - 0.58) / 0.5)))


def measures(**changes) -> FaceMeasures:
    values = {"size_px": 300, "sharpness": 300, "brightness": 128, "dark_clipped": 0.0, "bright_clipped": 0.0, "yaw_deg": 0, "pitch_deg": 0, "roll_deg": 0}
    values.update(changes)
    return FaceMeasures(**values)


@pytest.mark.parametrize(
    "changes, code",
    [
        ({}, None),
        ({"size_px": 90}, "face_too_small"),
        ({"sharpness": 12}, "blurry"),
        ({"yaw_deg": -65}, "extreme_pose"),
        ({"pitch_deg": 50}, "extreme_pose"),
        ({"brightness": 30}, "underexposed"),
        ({"dark_clipped": 0.5}, "underexposed"),
        ({"brightness": 230}, "overexposed"),
        ({"bright_clipped": 0.6}, "overexposed"),
        ({"brightness": 20, "sharpness": 5}, "underexposed"),  # a dark face also measures blurry: exposure is the cause
    ],
)
def test_face_problem_names_the_failed_threshold(changes, code):
    problem = face_problem(measures(**changes), QualityThresholds())
    assert (problem[0] if problem else None) == code
    if problem:
        assert any(ch.isdigit() for ch in problem[1])  # the sentence states the measured value


def test_perceptual_hash_survives_resizing_and_jpeg_but_not_another_picture():
    rng = np.random.default_rng(0)
    base = (np.kron(rng.integers(0, 255, (12, 16, 3)), np.ones((40, 40, 1)))).astype(np.uint8)  # 480x640 blocks
    buffer = io.BytesIO()
    Image.fromarray(base).resize((320, 240)).save(buffer, format="JPEG", quality=70)
    copy = np.asarray(Image.open(buffer).convert("RGB"))
    other = (np.kron(rng.integers(0, 255, (12, 16, 3)), np.ones((40, 40, 1)))).astype(np.uint8)
    assert hamming(perceptual_hash(base), perceptual_hash(copy)) <= 4
    assert hamming(perceptual_hash(base), perceptual_hash(other)) >= 16
    assert hamming(5, 6) == 2
    from lora_likeness.dataset.prepare import hash_distances

    hashes = [perceptual_hash(base), perceptual_hash(other), 2**64 - 1, 0]
    assert hash_distances(np.array(hashes, dtype=np.uint64), perceptual_hash(copy)).tolist() == [hamming(h, perceptual_hash(copy)) for h in hashes]


# ---- crop geometry ----------------------------------------------------------------------------


def contains(window: CropWindow, box) -> bool:
    x1, y1, x2, y2 = window.box
    return x1 <= box[0] + 1e-6 and y1 <= box[1] + 1e-6 and x2 >= box[2] - 1e-6 and y2 >= box[3] - 1e-6


def test_windows_in_a_large_photo_are_square_ideal_and_hold_the_face():
    face = [900.0, 500.0, 1100.0, 760.0]  # 260 px face in a 2000x3000 photo
    sizes = {}
    for framing in ("close-up", "head-and-shoulders", "half-body"):
        window, why = plan_window((2000, 3000), [face], framing)
        assert why is None and window.padding == 0.0 and window.scale == 1.0
        assert window.width == pytest.approx(window.height)
        assert contains(window, protected_box([face], (2000, 3000)))
        sizes[framing] = window.width
    assert sizes["close-up"] == pytest.approx(2.0 * 260) and sizes["half-body"] == pytest.approx(6.0 * 260)


def test_window_shifts_inside_the_photo_rather_than_padding():
    face = [10.0, 20.0, 210.0, 280.0]  # face at the top-left corner
    window, _ = plan_window((1500, 1500), [face], "head-and-shoulders")
    assert window.padding == 0.0 and window.box[0] == 0.0 and window.box[1] == 0.0
    assert contains(window, protected_box([face], (1500, 1500)))


def test_small_photo_pads_a_little_or_refuses():
    face = [60.0, 100.0, 260.0, 350.0]  # 250 px face in a 330x512 portrait: a square needs 17% padding
    window, why = plan_window((330, 512), [face], "close-up")
    assert window is None and why == "padding"
    window, why = plan_window((330, 512), [face], "close-up", max_padding=0.3)
    assert window is not None and 0 < window.padding <= 0.3
    assert contains(window, protected_box([face], (330, 512)))
    portrait, _ = plan_window((330, 512), [face], "close-up", aspect=330 / 512)
    assert portrait is not None and portrait.width < portrait.height  # keep-aspect windows fit without padding


def test_other_faces_stay_out_of_the_window():
    subject = [1000.0, 600.0, 1200.0, 860.0]
    neighbour = [1350.0, 600.0, 1550.0, 860.0]  # close on the right
    window, why = plan_window((3000, 2000), [subject], "close-up", foreign=[neighbour])
    assert why is None and window.box[2] <= neighbour[0] + 0.02 * 200
    assert contains(window, protected_box([subject], (3000, 2000)))
    touching = [1230.0, 600.0, 1430.0, 860.0]  # too close to keep out of any framing
    window, why = plan_window((3000, 2000), [subject], "close-up", foreign=[touching])
    assert window is None and why == "foreign"
    both, _ = plan_window((3000, 2000), [subject, neighbour], "half-body")
    assert contains(both, protected_box([subject, neighbour], (3000, 2000)))  # several framed faces fit together


def test_render_crop_pads_with_the_border_colour_and_never_stretches(tmp_path):
    canvas = np.full((400, 200, 3), (200, 40, 40), np.uint8)  # red photo, 200 wide
    canvas[150:250, 50:150] = (20, 200, 20)  # a green square in the middle
    path = tmp_path / "photo.png"
    Image.fromarray(canvas).save(path)
    window = CropWindow(box=(-50.0, 100.0, 250.0, 400.0), framing="close-up", padding=1 / 3, scale=1.0)
    image, upscale = render_crop(path, window, (300, 300), (200, 400))
    assert image.size == (300, 300) and upscale == pytest.approx(1.0)
    pixels = np.asarray(image).astype(int)
    assert np.abs(pixels[150, 10] - (200, 40, 40)).max() <= 2  # left padding: the border's colour
    green = np.argwhere((pixels[:, :, 1] > 150) & (pixels[:, :, 0] < 80))
    height, width = green.max(axis=0) - green.min(axis=0) + 1
    assert abs(height - 100) <= 3 and abs(width - 100) <= 3  # still a square: no stretching
    assert abs(green[:, 1].min() - 100) <= 2 and abs(green[:, 0].min() - 50) <= 2
    missing = tmp_path / "gone.png"
    image, error = render_crop(missing, window, (300, 300), (200, 400))
    assert image is None and "not found" in error


def test_output_size_keeps_area_for_buckets():
    square = CropWindow((0, 0, 100, 100), "close-up", 0.0, 1.0)
    tall = CropWindow((0, 0, 100, 200), "close-up", 0.0, 1.0)
    assert output_size(512, square, keep_aspect=False) == (512, 512)
    assert output_size(512, tall, keep_aspect=False) == (512, 512)
    width, height = output_size(1024, tall, keep_aspect=True)
    assert width % 8 == 0 and height % 8 == 0 and height > width and abs(width * height / 1024**2 - 1) < 0.02


# ---- identities -------------------------------------------------------------------------------


def unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def test_largest_cluster_is_the_subject_and_one_face_per_photo():
    rng = np.random.default_rng(1)
    alice, bob = unit(rng.normal(size=32)), unit(rng.normal(size=32))
    keys, vectors = [], []
    for photo in range(6):  # alice in six photos, bob in three of them
        keys.append((photo, 0))
        vectors.append(unit(alice + 0.3 * rng.normal(size=32) / 5.6))
        if photo < 3:
            keys.append((photo, 1))
            vectors.append(unit(bob + 0.3 * rng.normal(size=32) / 5.6))
    clusters = find_clusters(np.array(vectors), keys, threshold=0.5)
    assert [len(c.members) for c in clusters] == [6, 3]
    assert all(face == 0 for _, face in clusters[0].members)
    assert float(clusters[0].centroid @ alice) > 0.95 and float(clusters[1].centroid @ bob) > 0.95


def test_assign_faces_greedy_one_person_per_face():
    a, b = unit([1, 0, 0]), unit([0, 1, 0])
    faces = [unit([0.2, 1, 0]), unit([1, 0.1, 0]), unit([0, 0, 1])]
    assigned, best = assign_faces(faces, {"a": a, "b": b}, threshold=0.5)
    assert assigned == {"a": 1, "b": 0}
    assert best["a"] == pytest.approx(float(faces[1] @ a))
    assigned, _ = assign_faces([unit([0.7, 0.7, 0])], {"a": a, "b": b}, threshold=0.5)
    assert len(assigned) == 1  # one face cannot be two people
    assert assign_faces([], {"a": a}, 0.5)[0] == {}


def test_outliers_need_a_clear_gap():
    assert outliers([0.9, 0.88, 0.91, 0.87, 0.6]) == [4]
    assert outliers([0.9, 0.88, 0.91, 0.87, 0.8]) == []  # within 0.15 of the median
    assert outliers([0.9, 0.2, 0.3]) == []  # too few to say


def test_coverage_matrix_counts_exact_and_inclusive_subsets():
    labels = [frozenset({"a"}), frozenset({"a"}), frozenset({"a", "b"}), frozenset({"b"}), frozenset({"a", "b", "c"})]
    rows = {r.identities: (r.exactly, r.at_least) for r in coverage_matrix(["a", "b", "c"], labels)}
    assert list(rows) == [("a",), ("b",), ("c",), ("a", "b"), ("a", "c"), ("b", "c"), ("a", "b", "c")]
    assert rows[("a",)] == (2, 4) and rows[("b",)] == (1, 3) and rows[("c",)] == (0, 1)
    assert rows[("a", "b")] == (1, 2) and rows[("a", "c")] == (0, 1) and rows[("a", "b", "c")] == (1, 1)


# ---- Kohya ------------------------------------------------------------------------------------


def test_repeats_formula_and_folder_names():
    assert repeats_for(20, 200, 1) == 10
    assert repeats_for(30, 200, 1) == 7  # ceil(6.67)
    assert repeats_for(30, 200, 2) == 14
    assert repeats_for(500, 200, 1) == 1 and repeats_for(0, 200) == 1
    assert steps_per_epoch(30 * 7, 2) == 105
    assert subset_folder_name(10, [("ohwx", "man")]) == "10_ohwx man"
    assert subset_folder_name(4, [("ohwxa", "man"), ("ohwxb", "woman")]) == "4_ohwxa man, ohwxb woman"
    assert parse_folder_name("10_ohwx man") == (10, "ohwx man")
    assert parse_folder_name("4_ohwxa man, ohwxb woman") == (4, "ohwxa man, ohwxb woman")
    assert parse_folder_name("previous") is None


def test_dataset_toml_parses_with_the_expected_values(tmp_path):
    text = dataset_toml(
        [Subset(tmp_path / 'img' / '10_ohwx man', 10, "ohwx man"), Subset(tmp_path / "reg" / "1_man", 1, "man", is_reg=True)],
        resolution=768, batch_size=2, comment='from "C:\\photos"\nsecond line',
    )
    data = tomllib.loads(text)
    assert data["general"] == {"shuffle_caption": True, "keep_tokens": 1, "caption_extension": ".txt"}
    dataset = data["datasets"][0]
    assert (dataset["resolution"], dataset["batch_size"], dataset["max_bucket_reso"], dataset["min_bucket_reso"]) == (768, 2, 1536, 256)
    assert [s["is_reg"] for s in dataset["subsets"]] == [False, True]
    assert dataset["subsets"][0]["image_dir"].endswith("img/10_ohwx man")
    assert text.startswith('# from "C:\\photos"\n# second line\n')


def _checkpoint_header(path, keys):
    """A .safetensors file with a checkpoint's key names and shapes (all a model family is told by)."""
    from safetensors.numpy import save_file

    save_file({key: np.zeros(shape, np.float16) for key, shape in keys.items()}, str(path))
    return path


SD1_HEADER = {"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 1, 1), "cond_stage_model.transformer.text_model.final_layer_norm.weight": (4,)}
SDXL_HEADER = {"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 1, 1),
               "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (4,),
               "conditioner.embedders.1.model.ln_final.weight": (4,)}


def test_the_family_sets_crop_size_and_buckets(tmp_path):
    from lora_likeness.dataset.kohya import bucket_limits
    from lora_likeness.families import FAMILIES

    sd1, sdxl = FAMILIES["sd1"], FAMILIES["sdxl"]
    # the family's own limits at its own size (what its trainer defaults to) ...
    assert bucket_limits(512, sd1) == (sd1.defaults.min_bucket_reso, sd1.defaults.max_bucket_reso) == (256, 1024)
    assert bucket_limits(1024, sdxl) == (sdxl.defaults.min_bucket_reso, sdxl.defaults.max_bucket_reso) == (512, 2048)
    # ... widened for other crop sizes (SD1.x at 768/1024: the 256 .. 2 x size prepare always wrote)
    assert bucket_limits(768, sd1) == (256, 1536) and bucket_limits(1024, sd1) == (256, 2048) and bucket_limits(512, sdxl) == (256, 2048)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 64)).save(photos / "a.png")
    ok = {"photos": photos, "out": tmp_path / "out", "trigger": "ohwx", "class_word": "man"}
    assert PrepareConfig(**ok).size == 512 and PrepareConfig(**ok).family == "sd1"
    assert PrepareConfig(**ok, family="sdxl").size == 1024 and PrepareConfig(**ok, family="sdxl", size=768).size == 768
    with pytest.raises(PrepareConfigError, match="--family must be one of sd1, sdxl, not 'flux'"):
        PrepareConfig(**ok, family="flux").validate()
    text = dataset_toml([Subset(tmp_path / "img" / "5_ohwx man", 5, "ohwx man")], resolution=1024, min_bucket_reso=512, max_bucket_reso=2048)
    dataset = tomllib.loads(text)["datasets"][0]
    assert (dataset["resolution"], dataset["min_bucket_reso"], dataset["max_bucket_reso"], dataset["bucket_reso_steps"]) == (1024, 512, 2048, 64)


def test_prepare_reads_the_family_from_family_or_base(tmp_path):
    from lora_likeness.cli import build_parser
    from lora_likeness.dataset.command import build_config

    sdxl = _checkpoint_header(tmp_path / "sdxl.safetensors", SDXL_HEADER)
    sd1 = _checkpoint_header(tmp_path / "sd15.safetensors", SD1_HEADER)
    parser = build_parser()
    common = ["prepare", "--photos", str(tmp_path), "--out", str(tmp_path / "o"), "--trigger", "ohwx"]

    def config(*extra):
        return build_config(parser.parse_args([*common, *extra]))

    assert (config().family, config().size) == ("sd1", 512)
    assert (config("--family", "sdxl").family, config("--family", "sdxl").size) == ("sdxl", 1024)
    assert (config("--base", str(sdxl)).family, config("--base", str(sdxl)).size) == ("sdxl", 1024)
    assert (config("--base", str(sd1), "--size", "768").family, config("--base", str(sd1), "--size", "768").size) == ("sd1", 768)
    with pytest.raises(PrepareConfigError, match="--base: base sdxl.safetensors is an SDXL model, not SD1.x as asked"):
        config("--base", str(sdxl), "--family", "sd1")
    with pytest.raises(PrepareConfigError, match="--base: base model .*missing.safetensors does not exist"):
        config("--base", str(tmp_path / "missing.safetensors"))
    with pytest.raises(SystemExit):
        parser.parse_args([*common, "--family", "flux"])


def test_run_prepares_the_dataset_for_the_bases_family(tmp_path, monkeypatch):
    """``likeness run`` reads the base's family and hands it to prepare (crop size and dataset.toml buckets)."""
    from lora_likeness.dataset import prepare as prepare_module
    from lora_likeness.sweep.run import RunConfig, run_all

    seen = []

    class Stop(Exception):
        pass

    def fake_prepare(engine, config, progress=None, cache=None):
        seen.append(config)
        raise Stop

    monkeypatch.setattr(prepare_module, "prepare_dataset", fake_prepare)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 64)).save(photos / "a.png")
    for name, keys in (("sdxl", SDXL_HEADER), ("sd1", SD1_HEADER)):
        base = _checkpoint_header(tmp_path / f"{name}.safetensors", keys)
        with pytest.raises(Stop):
            run_all(RunConfig(photos=photos, trigger="ohwx", class_word="man", base=base, out=tmp_path / f"run-{name}"), engine=object(),
                    cache=object())
    assert [(c.family, c.size) for c in seen] == [("sdxl", 1024), ("sd1", 512)]


# ---- face boxes -------------------------------------------------------------------------------


def test_face_boxes_from_csv_tsv_and_json(tmp_path):
    csv_file = tmp_path / "boxes.csv"
    csv_file.write_text("file,x,y,w,h,name\n2021/a.jpg,0.1,0.2,0.3,0.4,Alice\nb.jpg,0.5,0.5,0.1,0.1,\n")
    tsv_file = tmp_path / "boxes.tsv"
    tsv_file.write_text("file\tx\ty\tw\th\n2021/a.jpg\t0.1\t0.2\t0.3\t0.4\n")
    json_file = tmp_path / "boxes.json"
    json_file.write_text(json.dumps({"markers": [{"File": "2021/a.jpg", "X": 0.1, "Y": 0.2, "W": 0.3, "H": 0.4}]}))
    for path in (csv_file, tsv_file, json_file):
        first = load_face_boxes(path)[0]
        assert (first.file, first.x, first.y, first.w, first.h) == ("2021/a.jpg", 0.1, 0.2, 0.3, 0.4)
    boxes = load_face_boxes(csv_file)
    assert boxes[0].name == "Alice" and boxes[1].name is None
    assert boxes[0].to_pixels((1000, 500)).tolist() == pytest.approx([100, 100, 400, 300])


def test_face_box_errors_name_the_row(tmp_path):
    pixels = tmp_path / "pixels.csv"
    pixels.write_text("file,x,y,w,h\na.jpg,0.1,0.1,0.2,0.2\nb.jpg,120,80,64,64\n")
    with pytest.raises(FaceBoxError, match=r"entry 3.*relative"):
        load_face_boxes(pixels)
    missing = tmp_path / "missing.csv"
    missing.write_text("file,x,y\na.jpg,0.1,0.1\n")
    with pytest.raises(FaceBoxError, match="missing w, h"):
        load_face_boxes(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(FaceBoxError, match="not valid JSON"):
        load_face_boxes(broken)


def test_match_boxes_by_path_suffix_and_unique_name():
    from lora_likeness.dataset.boxes import FaceBox

    rels = ["2021/a.jpg", "2022/a.jpg", "2022/b.jpg", "c.jpg"]
    boxes = [FaceBox("2021/a.jpg", 0, 0, 1, 1), FaceBox("/srv/photos/2022/b.jpg", 0, 0, 1, 1), FaceBox("old/c.jpg", 0, 0, 1, 1),
             FaceBox("a.jpg", 0, 0, 1, 1), FaceBox("zzz.jpg", 0, 0, 1, 1)]
    matched, warnings = match_boxes(boxes, rels)
    assert {k: len(v) for k, v in matched.items()} == {"2021/a.jpg": 1, "2022/b.jpg": 1, "c.jpg": 1}
    assert "2 face box(es)" in warnings[0] and "zzz.jpg" in warnings[0]  # a.jpg is ambiguous, zzz.jpg absent
    assert iou(np.array([0, 0, 10, 10.0]), np.array([5, 0, 15, 10.0])) == pytest.approx(1 / 3)


# ---- captions and config ----------------------------------------------------------------------


def test_caption_order_suits_keep_tokens():
    assert build_caption([("ohwx", "man")], "close-up") == "ohwx man, close-up"
    caption = build_caption([("ohwxa", "man"), ("ohwxb", "woman")], "half-body",
                            ["smile", "upper body", "1boy", "man", "outdoors", "smile"], exclude=["1boy"])
    assert caption == "ohwxa man, ohwxb woman, upper body, smile, outdoors"


def make_tagger(folder, probabilities):
    """A stand-in WD14 tagger: an ONNX graph with the real interface (N, 448, 448, 3) -> (N, K)
    whose output is sigmoid(logit) per tag, whatever the image."""
    import onnx
    from onnx import TensorProto, helper

    logits = np.log(np.asarray(probabilities) / (1 - np.asarray(probabilities))).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Unsqueeze", ["nothing", "axis"], ["column"]),
        helper.make_node("Add", ["column", "logits"], ["scores"]),
        helper.make_node("Sigmoid", ["scores"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "tagger",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 448, 448, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", len(probabilities)])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]), helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
         helper.make_tensor("logits", TensorProto.FLOAT, [len(probabilities)], logits.tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))


def test_wd14_tagger_returns_general_tags_above_threshold(tmp_path):
    folder = tmp_path / "wd14"
    make_tagger(folder, [0.9, 0.3, 0.95, 0.6, 0.8])
    (folder / "selected_tags.csv").write_text(
        "tag_id,name,category,count\n1,short_hair,0,10\n2,hat,0,10\n3,general,9,10\n4,red_tie,0,10\n5,some_character,4,10\n"
    )
    tagger = WD14Tagger(folder, threshold=0.35)
    tags = tagger(np.zeros((300, 200, 3), np.uint8))
    assert tags == ["short hair", "red tie"]  # by probability; the rating and character tags are not general
    (folder / "selected_tags.csv").write_text("id,tag\n1,x\n")
    with pytest.raises(ValueError, match="tag_id,name,category"):
        WD14Tagger(folder)


def test_config_validation_messages(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    ok = {"photos": photos, "out": tmp_path / "out", "trigger": "ohwx", "class_word": "man"}
    with pytest.raises(PrepareConfigError, match="holds no photo: no image file .* it is empty"):
        PrepareConfig(**ok).validate()
    Image.new("RGB", (8, 8)).save(photos / "a.png")
    PrepareConfig(**ok).validate()
    cases = [
        ({"trigger": None}, "--trigger is required"),
        ({"trigger": "oh wx"}, "one word"),
        ({"class_word": "a,b"}, "--class"),
        ({"size": 640}, "--size"),
        ({"framings": ("full-body",)}, "framings"),
        ({"photos": tmp_path / "nowhere"}, "is not a folder"),
        ({"out": photos}, "photos folder itself"),
        ({"subject_refs": tmp_path / "refs"}, "does not exist"),
        ({"repeats": 0}, "--repeats"),
    ]
    for change, message in cases:
        with pytest.raises(PrepareConfigError, match=message):
            PrepareConfig(**{**ok, **change}).validate()
    nested = tmp_path / "out" / "img" / "photos"
    nested.mkdir(parents=True)
    with pytest.raises(PrepareConfigError, match="re-run moves away"):
        PrepareConfig(**{**ok, "photos": nested}).validate()
    spec = parse_identity("ohwxdad:man=refs/dad")
    assert (spec.name, spec.class_word, str(spec.refs)) == ("ohwxdad", "man", "refs/dad")
    assert parse_identity("mum=refs/mum").class_word is None
    with pytest.raises(PrepareConfigError, match="NAME=REF_DIR"):
        parse_identity("mum")
    with pytest.raises(PrepareConfigError, match="must differ"):
        PrepareConfig(photos=photos, out=tmp_path / "o", identities=[parse_identity(f"a={photos}"), parse_identity(f"A={photos}")]).validate()


def test_every_threshold_is_stated_in_the_report():
    from dataclasses import fields

    from lora_likeness.dataset.config import THRESHOLD_NOTES, SelectionSettings

    names = {f.name for f in fields(QualityThresholds)} | {f.name for f in fields(SelectionSettings)}
    assert names == set(THRESHOLD_NOTES)


def test_neighbour_counts_in_blocks_match_the_full_matrix():
    from lora_likeness.dataset.identity import neighbour_counts

    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(50, 8))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    full = (vectors @ vectors.T >= 0.3).sum(axis=1)
    assert neighbour_counts(vectors, 0.3, block=7).tolist() == full.tolist()
