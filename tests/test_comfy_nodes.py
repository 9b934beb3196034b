"""The ComfyUI nodes, called directly with IMAGE tensors ``(B, H, W, C)`` float 0..1, as ComfyUI calls them.

In CI ComfyUI is not installed, so the nodes run on ``comfy_nodes.standin`` (the node code itself is
unchanged). With ComfyUI's folder on ``PYTHONPATH`` the same tests run on its real node API
(``tests/integration/test_comfyui_host.py`` does that, and also runs the nodes inside a ComfyUI
server). Epoch Sweep's sampling is ComfyUI's own code: here a recording fake stands in for it,
which checks the sweep's order, labels, LoRA handling, architecture check and cancellation.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from comfy_pack import load_node_pack
from likeness_assets import PACK_DIR, PEOPLE
from lora_likeness.checkpoints import ArchitectureMismatch
from lora_likeness.faces import FaceEngine, PackNotFoundError
from lora_likeness.images import list_images
from lora_likeness.pipeline import ScoreSettings, build_references, score_folder
from lora_likeness.progress import Cancelled
from lora_likeness.recommend import NO_LORA, cells_from_records, recommend
from lora_likeness.references import NoReferencesError
from PIL import Image
from trainer_layouts import write_lora

torch = pytest.importorskip("torch", reason="IMAGE tensors need torch (the project venv has the CPU build)")

REPO = Path(__file__).resolve().parents[1]


pack = load_node_pack()
host = sys.modules[pack.__name__ + ".host"]
faces_nodes = sys.modules[pack.__name__ + ".faces"]
scoring_nodes = sys.modules[pack.__name__ + ".scoring"]
sweep_nodes = sys.modules[pack.__name__ + ".sweep"]
report_nodes = sys.modules[pack.__name__ + ".report"]
types = sys.modules[pack.__name__ + ".types"]

SIZE = 256


def image_batch(paths, size: int = SIZE):
    """Photos as one ComfyUI IMAGE batch (squared onto a grey canvas: a batch has one size)."""
    frames = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (size, size), (127, 127, 127))
        canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
        frames.append(np.asarray(canvas, np.float32) / 255.0)
    return torch.from_numpy(np.stack(frames))


def blank(count: int = 1, size: int = SIZE, value: float = 0.5):
    return torch.full((count, size, size, 3), value, dtype=torch.float32)


OBAMA = list_images(PEOPLE / "obama")
JOLIE = list_images(PEOPLE / "angelina_jolie")


@pytest.fixture(scope="module")
def face_model():
    return faces_nodes.FaceModel.execute(pack="likeness_test", provider="cpu", pack_path=str(PACK_DIR)).args[0]


@pytest.fixture(scope="module")
def obama_refs(face_model):
    return faces_nodes.ReferenceFaces.execute(face_model, "max", images=image_batch(OBAMA[:3])).args[0]


# --------------------------------------------------------------------------------------------
# The pack as ComfyUI sees it


@pytest.fixture(autouse=True)
def _comfyui_folders(tmp_path):
    """On the real API, node previews go to ComfyUI's temp folder: keep them out of the checkout."""
    if host.IN_COMFYUI:
        import folder_paths

        saved = folder_paths.get_temp_directory(), folder_paths.get_output_directory()
        folder_paths.set_temp_directory(str(tmp_path / "comfy-temp"))
        folder_paths.set_output_directory(str(tmp_path / "comfy-output"))
        yield
        folder_paths.set_temp_directory(saved[0])
        folder_paths.set_output_directory(saved[1])
    else:
        yield


def test_standin_only_where_comfyui_is_absent():
    real = importlib.util.find_spec("comfy_api") is not None
    assert host.IN_COMFYUI is real
    where = host.io.__module__ if isinstance(host.io, type) else host.io.__name__  # a class in 0.3.48, a module later
    assert where.startswith("comfy_api.") if real else where.endswith(".standin")


def test_every_node_schema_matches_its_execute():
    assert [n.define_schema().node_id for n in pack.NODES] == [
        "LikenessFaceModel", "LikenessReferenceFaces", "LikenessPeople", "LikenessScoreImages", "LikenessScoreTrainingSamples", "LikenessLoraCheckpoints",
        "LikenessEpochSweep", "LikenessScoredGrid", "LikenessPrepareDataset", "LikenessTrainLora",
    ]
    for node in pack.NODES:
        schema = node.define_schema()
        assert schema.category == "Likeness" and schema.display_name and schema.description
        parameters = inspect.signature(node.execute).parameters
        ids = [i.id for i in schema.inputs]
        assert len(set(ids)) == len(ids) and set(ids) == set(parameters), (schema.node_id, ids, list(parameters))
        for port in schema.inputs:
            # ComfyUI leaves out unconnected optional inputs: execute must not require them.
            has_default = parameters[port.id].default is not inspect.Parameter.empty
            assert has_default == bool(port.optional) or (has_default and hasattr(port, "default")), (schema.node_id, port.id)
        assert len({o.id for o in schema.outputs}) == len(schema.outputs)
    # The nodes that write files run even when nothing is connected to their outputs.
    assert [n.define_schema().node_id for n in pack.NODES if n.define_schema().is_output_node] == [
        "LikenessScoredGrid", "LikenessPrepareDataset", "LikenessTrainLora",
    ]


def test_entrypoint_lists_the_nodes():
    import asyncio

    extension = asyncio.run(pack.comfy_entrypoint())
    assert isinstance(extension, host.ComfyExtension)
    assert asyncio.run(extension.get_node_list()) == pack.NODES


# --------------------------------------------------------------------------------------------
# IMAGE tensors <-> the core's arrays


def test_tensor_conversion():
    batch = torch.rand(2, 5, 7, 3)
    arrays = types.tensor_to_arrays(batch)
    assert len(arrays) == 2 and arrays[0].shape == (5, 7, 3) and arrays[0].dtype == np.uint8
    assert np.abs(arrays[1] / 255.0 - batch[1].numpy()).max() <= 0.5 / 255 + 1e-6
    back = types.arrays_to_tensor(arrays)
    assert back.shape == (2, 5, 7, 3) and back.dtype == torch.float32
    rgba = types.tensor_to_arrays(torch.rand(1, 4, 4, 4))[0]
    assert rgba.shape == (4, 4, 3)
    grey = types.tensor_to_arrays(torch.full((1, 4, 4, 1), 1.0))[0]
    assert grey.shape == (4, 4, 3) and (grey == 255).all()
    assert types.tensor_to_arrays(torch.rand(4, 4, 3))[0].shape == (4, 4, 3)  # one image without batch axis
    with pytest.raises(ValueError, match=r"expected a ComfyUI IMAGE batch .* got shape \(2, 3, 8, 8\)"):
        types.tensor_to_arrays(torch.rand(2, 3, 8, 8))  # channels first


# --------------------------------------------------------------------------------------------
# Face Model


def test_face_model_loads_once(face_model):
    assert isinstance(face_model, FaceEngine) and face_model.location.name == "likeness_test"
    again = faces_nodes.FaceModel.execute(pack="ignored", provider="cpu", pack_path=str(PACK_DIR)).args[0]
    assert again is face_model


def test_face_model_without_a_pack_says_where_to_put_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("LIKENESS_MODELS_DIR", raising=False)
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.delenv("COMFYUI_DIR", raising=False)
    with pytest.raises(PackNotFoundError, match=r"ComfyUI/models/insightface/models/buffalo_l/") as error:
        faces_nodes.FaceModel.execute(pack="buffalo_l", provider="cpu")
    message = str(error.value)
    assert "Searched, in order" in message
    # ComfyUI's terms: the node's input and folder, not the command line's --pack / `likeness score --download`.
    assert "Face Model's pack_path input" in message
    assert "--pack" not in message and "--download" not in message and "likeness score" not in message
    with pytest.raises(PackNotFoundError) as error:
        faces_nodes.FaceModel.execute(pack="buffalo_l", provider="cpu", pack_path=str(tmp_path / "nowhere" / "buffalo_l"))
    message = str(error.value)
    assert "nowhere/buffalo_l does not exist" in message and "pack_path must be a folder" in message and "--pack" not in message
    schema = faces_nodes.FaceModel.define_schema()  # the node stays usable: it lists the default pack
    assert schema.inputs[0].options == ["buffalo_l"]


# --------------------------------------------------------------------------------------------
# Reference Faces


def test_reference_faces_from_a_batch(face_model):
    out = faces_nodes.ReferenceFaces.execute(face_model, "max", images=image_batch(OBAMA))
    references, preview, summary = out.args
    assert references.references.n == 4 and references.engine is face_model
    assert references.references.baseline.mean > 0.5
    assert tuple(preview.shape) == (4, faces_nodes.THUMBNAIL, faces_nodes.THUMBNAIL, 3)
    assert "4 reference face(s) from 4 photo(s)" in summary and "baseline (max" in summary
    assert len(out.ui.as_dict()["images"]) == 4  # shown on the node


def test_reference_faces_from_a_folder_match_the_cli(face_model):
    references = faces_nodes.ReferenceFaces.execute(face_model, "max", folder=str(PEOPLE / "obama")).args[0]
    cli = build_references(face_model, PEOPLE / "obama")
    assert references.references.n == cli.n == 4
    assert references.references.baseline.mean == pytest.approx(cli.baseline.mean, abs=1e-6)


def test_reference_faces_flag_someone_else_and_skip_faceless(face_model):
    photos = image_batch(OBAMA + JOLIE[:1])
    batch = torch.cat([photos, blank()])
    references, preview, summary = faces_nodes.ReferenceFaces.execute(face_model, "max", images=batch).args
    refs = references.references
    assert refs.n == 5 and len(refs.photos) == 6
    assert [p.outlier for p in refs.photos if p.row is not None] == [False] * 4 + [True]
    assert "image 5: loo" in summary and "OUTLIER?" in summary
    assert "image 6: skipped: no face found" in summary
    assert preview.shape[0] == 6  # the faceless photo is shown too, marked


def test_reference_faces_errors(face_model, tmp_path):
    with pytest.raises(ValueError, match="connect an IMAGE batch .* or type the path of a folder"):
        faces_nodes.ReferenceFaces.execute(face_model, "max")
    with pytest.raises(NoReferencesError, match="image 1: no face found"):
        faces_nodes.ReferenceFaces.execute(face_model, "max", images=blank(2))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        faces_nodes.ReferenceFaces.execute(face_model, "max", folder=str(tmp_path / "missing"))


def test_reference_folder_fingerprint_follows_the_files(tmp_path):
    folder = tmp_path / "refs"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    first = faces_nodes.ReferenceFaces.fingerprint_inputs(folder=str(folder))
    assert faces_nodes.ReferenceFaces.fingerprint_inputs(folder=str(folder)) == first
    Image.new("RGB", (8, 8)).save(folder / "b.png")
    assert faces_nodes.ReferenceFaces.fingerprint_inputs(folder=str(folder)) != first


# --------------------------------------------------------------------------------------------
# Score Images


def test_score_images_one_score_per_image_in_order(obama_refs):
    images = torch.cat([image_batch([OBAMA[3], JOLIE[0]]), blank(), image_batch([OBAMA[3]])])
    out = scoring_nodes.ScoreImages.execute(images=images, references=obama_refs)
    scores, summary, annotated, scored = out.args
    assert len(scores) == 4
    assert scores[0] > 0.4 > scores[1] and math.isnan(scores[2]) and scores[3] == pytest.approx(scores[0])
    assert tuple(annotated.shape) == tuple(images.shape)
    assert not torch.equal(annotated, images)  # boxes and badges drawn
    assert "| all | 4 | 3 | 25% |" in summary
    run = scored.run
    assert [i.path for i in run.images] == ["image 1", "image 2", "image 3", "image 4"]
    assert run.images[2].score.face_found is False and run.images[2].error is None


def test_score_images_agree_with_scoring_the_files(obama_refs, tmp_path):
    """The tensor path (ComfyUI) gives the CLI's scores for the same pixels: same colour order (BGR
    for insightface), same detection."""
    photos = [OBAMA[3], JOLIE[0], JOLIE[1]]
    images = image_batch(photos)
    folder = tmp_path / "generated"
    folder.mkdir()
    for i, rgb in enumerate(types.tensor_to_arrays(images)):
        Image.fromarray(rgb).save(folder / f"{i}.png")
    nodes_scores = scoring_nodes.ScoreImages.execute(images=images, references=obama_refs).args[0]
    refs_folder = tmp_path / "refs"
    refs_folder.mkdir()
    for i, rgb in enumerate(types.tensor_to_arrays(image_batch(OBAMA[:3]))):
        Image.fromarray(rgb).save(refs_folder / f"r{i}.png")
    cli = score_folder(obama_refs.engine, refs_folder, folder, ScoreSettings(group_by="none"))
    by_name = {i.path: i.score.value("max") for i in cli.images}
    assert nodes_scores == pytest.approx([by_name[f"{i}.png"] for i in range(3)], abs=1e-4)


def test_score_images_groups_by_labels(obama_refs):
    images = torch.cat([image_batch([OBAMA[3]]), blank(), image_batch([JOLIE[0]])])
    labels = [
        ("run e10 @1", {"run": "run", "epoch": 10, "strength": 1.0, "seed": 1}),
        ("run e2 @1", {"run": "run", "epoch": 2, "strength": 1.0, "seed": 1}),
        ("run e2 @1", {"run": "run", "epoch": 2, "strength": 1.0, "seed": 2}),
    ]
    scored = scoring_nodes.ScoreImages.execute(images=images, references=obama_refs, labels=labels).args[3]
    assert [g.label for g in scored.run.groups] == ["run e2 @1", "run e10 @1"]  # epoch order, not text order
    assert scored.labels == labels
    assert [i.path for i in scored.run.images][:2] == ["image 1 (run e10 @1 seed 1)", "image 2 (run e2 @1 seed 1)"]
    with pytest.raises(ValueError, match="2 labels for 3 images"):
        scoring_nodes.ScoreImages.execute(images=images, references=obama_refs, labels=labels[:2])


def side_by_side(*paths, height: int = 200):
    """One IMAGE of photos pasted side by side (a family picture), on a 640 x 240 grey canvas."""
    canvas = Image.new("RGB", (640, 240), (127, 127, 127))
    x = 10
    for path in paths:
        photo = Image.open(path).convert("RGB")
        photo = photo.resize((round(photo.width * height / photo.height), height))
        canvas.paste(photo, (x, 20))
        x += photo.width + 10
    return torch.from_numpy(np.asarray(canvas, np.float32)[None] / 255.0)


def test_people_node_scores_each_person_and_labels_their_faces(face_model, obama_refs):
    jolie_refs = faces_nodes.ReferenceFaces.execute(face_model, "max", images=image_batch(JOLIE[:4])).args[0]
    people, summary = faces_nodes.People.execute("obama, jolie", references_1=obama_refs, references_2=jolie_refs).args
    assert people.people.names == ["obama", "jolie"] and "jolie: 4 photo(s), acceptance threshold" in summary
    images = torch.cat([side_by_side(OBAMA[3], JOLIE[5]), side_by_side(OBAMA[3], OBAMA[3])])
    scores, summary, annotated, scored = scoring_nodes.ScoreImages.execute(images=images, references=people).args
    first, second = scored.run.images
    assert first.people.people["obama"].found and first.people.people["jolie"].found and not first.people.blended
    assert second.people.blended and not second.people.people["jolie"].found
    assert "| all | jolie (worst) | 2 | 50% |" in summary
    assert tuple(annotated.shape) == tuple(images.shape) and not torch.equal(annotated, images)
    # Only jolie expected: obama's absence from the second picture is no loss, jolie's is.
    scored = scoring_nodes.ScoreImages.execute(images=images, references=people, expect="jolie").args[3]
    assert scored.run.people_groups["all"].people["obama"].n_expected == 0
    grid, layout = report_nodes.grid_image(None, scored, None)  # no labels: the contact sheet, faces named
    assert grid.width > 0 and layout is None
    with pytest.raises(ValueError, match="one name per connected"):
        faces_nodes.People.execute("obama", references_1=obama_refs, references_2=jolie_refs)
    with pytest.raises(ValueError, match="not one of the people"):
        scoring_nodes.ScoreImages.execute(images=images, references=people, expect="bush")
    with pytest.raises(ValueError, match="connect a People node"):
        scoring_nodes.ScoreImages.execute(images=images, references=obama_refs, expect="obama")


@pytest.fixture()
def photo_folder(tmp_path):
    """Photos of different sizes, as a folder of generated images or a phone dump holds them: named so that
    natural order (img2 < img10) differs from text order, one without a face, one in a sub-folder."""
    import shutil

    folder = tmp_path / "generated"
    (folder / "more").mkdir(parents=True)
    shutil.copy(OBAMA[3], folder / "img10_obama.jpg")  # 1480 x 832
    shutil.copy(JOLIE[3], folder / "img2_jolie.jpg")  # 330 x 512
    shutil.copy(OBAMA[1], folder / "img1_obama.jpg")  # 626 x 1200
    Image.new("RGB", (300, 200), (128, 128, 128)).save(folder / "img3_blank.png")
    shutil.copy(JOLIE[7], folder / "more" / "jolie.jpg")  # 600 x 800
    return folder


def test_score_images_reads_a_folder_of_any_sizes_with_names(face_model, photo_folder, output_dir, tmp_path):
    """A folder of photos of different sizes is scored as files: each keeps its name, in natural order, grouped
    by sub-folder, with the CLI's scores; Scored Grid reports it without an IMAGE batch."""
    import shutil

    refs_folder = tmp_path / "refs"
    refs_folder.mkdir()
    for photo in (OBAMA[0], OBAMA[2]):
        shutil.copy(photo, refs_folder / photo.name)
    refs = faces_nodes.ReferenceFaces.execute(face_model, "max", folder=str(refs_folder)).args[0]
    scores, summary, annotated, scored = scoring_nodes.ScoreImages.execute(references=refs, folder=str(photo_folder)).args
    run = scored.run
    names = ["img1_obama.jpg", "img2_jolie.jpg", "img3_blank.png", "img10_obama.jpg", "more/jolie.jpg"]
    assert [i.path for i in run.images] == names and run.images_root == str(photo_folder)
    assert [i.group for i in run.images] == ["generated"] * 4 + ["more"]
    assert scores[0] > 0.4 and scores[3] > 0.4 and scores[1] < 0.4 and math.isnan(scores[2]) and scores[4] < 0.4
    cli = score_folder(face_model, refs_folder, photo_folder, ScoreSettings())
    cli_scores = {i.path: i.score.value("max") for i in cli.images}
    assert [cli_scores[n] for n in names] == pytest.approx([None if math.isnan(v) else v for v in scores], abs=1e-4)
    assert "| generated | 4 | 3 |" in summary and "| more | 1 | 1 |" in summary
    # The annotated images share one padded canvas, bounded for the preview, none stretched.
    assert tuple(annotated.shape) == (5, scoring_nodes.PREVIEW_SIDE, scoring_nodes.PREVIEW_SIDE, 3)
    tall = annotated[0].numpy()  # 626 x 1200 -> 401 x 768, centred: grey bands left and right
    assert np.allclose(tall[:, :150], 40 / 255, atol=1e-6) and not np.allclose(tall[:, 300:400], 40 / 255, atol=1e-6)

    grid, _summary, advice = report_nodes.ScoredGrid.execute(score_run=scored, filename_prefix="likeness/folder").args
    folder = output_dir / "likeness" / "folder_00001"
    rows = (folder / "scores.csv").read_text(encoding="utf-8").splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == names  # file names, not "image 1..5"
    assert f"- images: `{photo_folder}` (5 files)" in (folder / "report.md").read_text(encoding="utf-8")
    assert grid.shape[0] == 1 and advice == report_nodes.NO_RECOMMENDATION


def test_score_images_folder_relative_to_the_input_folder_and_errors(obama_refs, photo_folder, monkeypatch, tmp_path):
    monkeypatch.setattr(host, "input_directory", lambda: photo_folder.parent)
    scored = scoring_nodes.ScoreImages.execute(references=obama_refs, folder="generated").args[3]
    assert scored.run.images_root == str(photo_folder) and len(scored.run.images) == 5
    first = scoring_nodes.ScoreImages.fingerprint_inputs(folder="generated")
    Image.new("RGB", (64, 64)).save(photo_folder / "img4_new.png")
    assert scoring_nodes.ScoreImages.fingerprint_inputs(folder="generated") != first  # new files: re-run

    with pytest.raises(ValueError, match="connect an IMAGE batch .* or type the path of a folder"):
        scoring_nodes.ScoreImages.execute(references=obama_refs)
    with pytest.raises(ValueError, match="not both"):
        scoring_nodes.ScoreImages.execute(references=obama_refs, images=blank(), folder=str(photo_folder))
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        scoring_nodes.ScoreImages.execute(references=obama_refs, folder=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files in"):
        scoring_nodes.ScoreImages.execute(references=obama_refs, folder=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="labels belong to Epoch Sweep's images"):
        scoring_nodes.ScoreImages.execute(references=obama_refs, folder=str(photo_folder), labels=[("a", {})])


# --------------------------------------------------------------------------------------------
# LoRA Checkpoints


@pytest.fixture()
def loras(tmp_path, monkeypatch):
    root = tmp_path / "loras"
    for epoch in (1, 2, 10):
        write_lora(root / "people" / f"me-{epoch:06d}.safetensors", {"ss_epoch": str(epoch)}, 768)
    write_lora(root / "people" / "me.safetensors", {"ss_epoch": "12"}, 768)
    write_lora(root / "xl.safetensors", {"ss_base_model_version": "sdxl_base_v1-0"}, 2048)
    monkeypatch.setattr(host, "lora_roots", lambda: [root])
    return root


def test_lora_checkpoints_in_epoch_order(loras):
    schema = sweep_nodes.LoraCheckpoints.define_schema()
    assert schema.inputs[0].options == ["people/me", "xl"]
    items, listing = sweep_nodes.LoraCheckpoints.execute("people/me").args
    assert [c.label for c in items] == ["e1", "e2", "e10", "final (e12)"]
    assert [c.name for c in items][:2] == ["people/me-000001.safetensors", "people/me-000002.safetensors"]
    assert "4 checkpoint(s) of run people/me" in listing
    items = sweep_nodes.LoraCheckpoints.execute("people/me", first_epoch=2, last_epoch=10, include_final=False).args[0]
    assert [c.epoch for c in items] == [2, 10]
    with pytest.raises(ValueError, match=r"no checkpoint in the chosen range \(it has: e1, e2, e10, final \(e12\)\)"):
        sweep_nodes.LoraCheckpoints.execute("people/me", first_epoch=3, last_epoch=9, include_final=False)
    with pytest.raises(ValueError, match="runs found: people/me, xl"):
        sweep_nodes.LoraCheckpoints.execute("someone")


def test_lora_checkpoints_of_runs_saved_by_steps(monkeypatch, tmp_path):
    root = tmp_path / "loras"
    for step in (1000, 250, 500):  # ai-toolkit (job_000000250) and sd-scripts --save_every_n_steps (kx-step00000250)
        write_lora(root / f"job_{step:09d}.safetensors", {"training_info": json.dumps({"step": step, "epoch": 0})}, 768)
        write_lora(root / f"kx-step{step:08d}.safetensors", {"ss_steps": str(step), "ss_epoch": "1"}, 768)
    monkeypatch.setattr(host, "lora_roots", lambda: [root])
    for run in ("job", "kx"):
        items, listing = sweep_nodes.LoraCheckpoints.execute(run).args
        assert [c.label for c in items] == ["step 250", "step 500", "step 1000"] and "step 1000" in listing
        # No epoch files: the range is in steps (kx's ss_epoch 1 is the epoch in progress, not a range to compare)
        items = sweep_nodes.LoraCheckpoints.execute(run, first_epoch=500, last_epoch=1000).args[0]
        assert [c.label for c in items] == ["step 500", "step 1000"]
        items = sweep_nodes.LoraCheckpoints.execute(run, first_epoch=0, last_epoch=300).args[0]
        assert [c.label for c in items] == ["step 250"]


def test_lora_checkpoints_without_files(monkeypatch, tmp_path):
    monkeypatch.setattr(host, "lora_roots", lambda: [tmp_path / "empty"])
    assert sweep_nodes.LoraCheckpoints.define_schema().inputs[0].options == [sweep_nodes.NO_RUNS]
    with pytest.raises(FileNotFoundError, match=r"No LoRA files found in .*empty.*name-000001.safetensors"):
        sweep_nodes.LoraCheckpoints.execute(sweep_nodes.NO_RUNS)


def test_lora_checkpoints_fingerprint_sees_new_epochs(loras):
    before = sweep_nodes.LoraCheckpoints.fingerprint_inputs(run="people/me")
    write_lora(loras / "people" / "me-000011.safetensors", {"ss_epoch": "11"}, 768)
    assert sweep_nodes.LoraCheckpoints.fingerprint_inputs(run="people/me") != before


# --------------------------------------------------------------------------------------------
# Epoch Sweep (ComfyUI's sampling replaced by a recording fake)


class FakeSampling:
    """Records the calls Epoch Sweep makes; "images" encode (strength, seed) so order can be checked."""

    def __init__(self, arch="sd1", cancel_after=None, matching=5):
        self.arch, self.cancel_after, self.matching = arch, cancel_after, matching
        self.calls = []

    def architecture(self, model):
        return self.arch

    def load_lora(self, path):
        self.calls.append(("load", Path(path).name))
        return {"lora": Path(path).name}

    def matching_keys(self, model, clip, lora):
        return self.matching

    def apply(self, model, clip, lora, strength):
        self.calls.append(("apply", model, lora["lora"], strength))
        return ("patched", lora["lora"], strength), ("patched clip", strength)

    def encode(self, clip, text):
        return (clip, text)

    def sample(self, model, positive, negative, seed, steps, cfg, sampler_name, scheduler, width, height, progress):
        self.calls.append(("sample", model, seed))
        for step in range(steps):
            progress.step(step)
        if self.cancel_after is not None and sum(c[0] == "sample" for c in self.calls) >= self.cancel_after:
            progress.cancel()  # what ComfyUI's Stop does, seen by the next check
        strength = float(model[2]) if isinstance(model, tuple) else 0.0  # the unpatched base: strength 0
        return torch.full((1, 4, height // 8, width // 8), strength * 100 + seed)

    def decode(self, vae, samples):
        return torch.full((1, 16, 16, 3), float(samples.flatten()[0]) / 1000.0)


SWEEP_ARGS = {"positive": "photo of sks", "negative": "", "strengths": "0.5, 1", "seeds": "1, 2", "steps": 3, "cfg": 5.0,
              "sampler_name": "euler", "scheduler": "normal", "width": 64, "height": 64}


def test_epoch_sweep_order_labels_and_one_lora_load_each(loras, monkeypatch):
    fake = FakeSampling()
    monkeypatch.setattr(sweep_nodes.EpochSweep, "sampling", fake)
    items = sweep_nodes.LoraCheckpoints.execute("people/me", first_epoch=1, last_epoch=2, include_final=False).args[0]
    images, labels = sweep_nodes.EpochSweep.execute("BASE", "CLIP", "VAE", items, **SWEEP_ARGS, include_baseline=False).args
    assert tuple(images.shape) == (8, 16, 16, 3)
    assert [(info["row"], info["column"], info["seed"]) for _, info in labels] == [
        (row, column, seed) for row in ("e1", "e2") for column in ("@0.5", "@1") for seed in (1, 2)]
    assert labels[0] == ("me e1 @0.5", {"run": "me", "epoch": 1, "step": None, "strength": 0.5, "seed": 1,
                                        "lora": "people/me-000001.safetensors", "row": "e1", "column": "@0.5"})
    # image i was sampled with labels[i]'s strength and seed
    assert [round(float(img[0, 0, 0]) * 1000) for img in images] == [round(i["strength"] * 100 + i["seed"]) for _, i in labels]
    loads = [c for c in fake.calls if c[0] == "load"]
    applies = [c for c in fake.calls if c[0] == "apply"]
    assert loads == [("load", "me-000001.safetensors"), ("load", "me-000002.safetensors")]
    assert [(c[2], c[3]) for c in applies] == [("me-000001.safetensors", 0.5), ("me-000001.safetensors", 1.0),
                                               ("me-000002.safetensors", 0.5), ("me-000002.safetensors", 1.0)]
    assert all(c[1] == "BASE" for c in applies)  # always onto the loaded base, never onto a patched clone


def test_epoch_sweep_samples_the_no_lora_baseline_first_once_per_seed(loras, monkeypatch):
    fake = FakeSampling()
    monkeypatch.setattr(sweep_nodes.EpochSweep, "sampling", fake)
    schema = sweep_nodes.EpochSweep.define_schema()
    option = schema.inputs[-1]  # last and optional: saved workflows and API prompts without it stay valid
    assert (option.id, option.optional, option.default) == ("include_baseline", True, True)
    items = sweep_nodes.LoraCheckpoints.execute("people/me", first_epoch=1, last_epoch=2, include_final=False).args[0]
    images, labels = sweep_nodes.EpochSweep.execute("BASE", "CLIP", "VAE", items, **SWEEP_ARGS).args  # default: on
    assert tuple(images.shape) == (10, 16, 16, 3)
    assert labels[:2] == [(NO_LORA, {"run": None, "epoch": None, "step": None, "strength": 0.0, "seed": seed, "lora": None,
                                     "row": NO_LORA, "column": "@0"}) for seed in (1, 2)]
    assert [label for label, _ in labels[2:4]] == ["me e1 @0.5", "me e1 @0.5"]
    samples = [c for c in fake.calls if c[0] == "sample"]
    assert samples[:2] == [("sample", "BASE", 1), ("sample", "BASE", 2)]  # the loaded model itself, no LoRA applied
    assert all(c[1] != "BASE" for c in samples[2:])
    assert next(c for c in fake.calls if c[0] == "apply")[2:] == ("me-000001.safetensors", 0.5)
    assert [round(float(img[0, 0, 0]) * 1000) for img in images[:2]] == [1, 2]


def test_epoch_sweep_refuses_another_architecture_before_sampling(loras, monkeypatch):
    fake = FakeSampling(arch="sd1")
    monkeypatch.setattr(sweep_nodes.EpochSweep, "sampling", fake)
    items = sweep_nodes.LoraCheckpoints.execute("people/me").args[0] + sweep_nodes.LoraCheckpoints.execute("xl").args[0]
    with pytest.raises(ArchitectureMismatch, match="xl.safetensors is a SDXL LoRA but the loaded model is SD1.x"):
        sweep_nodes.EpochSweep.execute("BASE", "CLIP", "VAE", items, **SWEEP_ARGS)
    assert fake.calls == []  # nothing loaded or sampled
    # The reverse: SD1.x LoRAs on an SDXL model.
    fake = FakeSampling(arch="sdxl")
    monkeypatch.setattr(sweep_nodes.EpochSweep, "sampling", fake)
    with pytest.raises(ArchitectureMismatch, match="me-000001.safetensors is a SD1.x LoRA but the loaded model is SDXL"):
        sweep_nodes.EpochSweep.execute("BASE", "CLIP", "VAE", sweep_nodes.LoraCheckpoints.execute("people/me").args[0], **SWEEP_ARGS)
    assert fake.calls == []


def test_epoch_sweep_lora_without_matching_weights(loras, monkeypatch):
    monkeypatch.setattr(sweep_nodes.EpochSweep, "sampling", FakeSampling(arch="unknown", matching=0))
    items = sweep_nodes.LoraCheckpoints.execute("people/me").args[0]
    with pytest.raises(ArchitectureMismatch, match="none of its weights match the loaded model"):
        sweep_nodes.EpochSweep.execute("BASE", "CLIP", "VAE", items, **SWEEP_ARGS)


def test_epoch_sweep_stops_when_cancelled(loras, monkeypatch):
    fake = FakeSampling(cancel_after=3)
    monkeypatch.setattr(sweep_nodes.EpochSweep, "sampling", fake)
    items = sweep_nodes.LoraCheckpoints.execute("people/me").args[0]
    with pytest.raises(Cancelled, match="after 3 of 18"):  # 2 baseline images + 4 checkpoints x 2 strengths x 2 seeds
        sweep_nodes.EpochSweep.execute("BASE", "CLIP", "VAE", items, **SWEEP_ARGS)
    assert sum(c[0] == "sample" for c in fake.calls) == 3


def test_sweep_lists_parse():
    assert sweep_nodes.parse_numbers("0.6, 0.8 1.0;0.6", float, "strengths") == [0.6, 0.8, 1.0]
    assert sweep_nodes.parse_numbers("1,2, 3", int, "seeds") == [1, 2, 3]
    with pytest.raises(ValueError, match=r"seeds: 'x' is not an integer"):
        sweep_nodes.parse_numbers("1, x", int, "seeds")
    with pytest.raises(ValueError, match="seeds: 1.5 is not an integer|seeds: '1.5' is not an integer"):
        sweep_nodes.parse_numbers("1.5", int, "seeds")
    with pytest.raises(ValueError, match="strengths: give at least one value"):
        sweep_nodes.parse_numbers(" , ", float, "strengths")


# --------------------------------------------------------------------------------------------
# Scored Grid


@pytest.fixture()
def output_dir(tmp_path, monkeypatch):
    out = tmp_path / "output"
    monkeypatch.setattr(host, "output_directory", lambda: out)
    return out


def test_scored_grid_epochs_by_strengths_and_report(obama_refs, output_dir):
    # Epoch Sweep's order is checkpoint-major; give it shuffled to check the axes are sorted.
    cells = [("e10", 10, 1.0), ("e2", 2, 0.5), ("final (e12)", None, 0.5), ("e2", 2, 1.0), ("e10", 10, 0.5), ("final (e12)", None, 1.0)]
    labels = [(f"me {row} @{s:g}", {"run": "me", "epoch": epoch, "strength": s, "seed": 1, "row": row, "column": f"@{s:g}"})
              for row, epoch, s in cells]
    labels[2][1]["epoch"] = None  # the final file
    images = torch.cat([image_batch([OBAMA[3]]), image_batch([JOLIE[0]]), blank(), image_batch([OBAMA[3]]),
                        image_batch([JOLIE[1]]), image_batch([OBAMA[3]])])
    scored = scoring_nodes.ScoreImages.execute(images=images, references=obama_refs, labels=labels).args[3]
    out = report_nodes.ScoredGrid.execute(images=images, score_run=scored, labels=labels, filename_prefix="likeness/test")
    grid, summary, advice = out.args
    assert grid.shape[0] == 1 and grid.shape[3] == 3 and grid.shape[1] > 2 * 128 and grid.shape[2] > 2 * 128
    folder = output_dir / "likeness" / "test_00001"
    for name in ("scores.csv", "summary.csv", "report.json", "report.md", "scores.png", "contact_sheet.png", "grid.png",
                 "grid.json", "recommendation.json"):
        assert (folder / name).is_file(), name
    layout = json.loads((folder / "grid.json").read_text())
    assert layout["rows"] == ["e2", "e10", "final (e12)"] and layout["columns"] == ["@0.5", "@1"]
    obama_score = scored.run.images[0].score.value("max")
    assert layout["row_means"]["e10"] == pytest.approx((obama_score + scored.run.images[4].score.value("max")) / 2)
    final_cells = {c["column"]: c for c in layout["cells"] if c["row"] == "final (e12)"}
    assert final_cells["@0.5"]["mean"] is None and final_cells["@0.5"]["scores"] == [None]  # no face: missing, not 0
    assert f"report: {folder}" in summary
    # Three cells hold the same photo: the tie goes to the earliest cell in sweep order (epoch, then strength).
    assert advice.startswith("Recommended: e2 @ 1 — identity ") and layout["recommended"] == {"row": "e2", "column": "@1"}
    shown = out.ui["images"]
    assert [s["filename"] for s in shown] == ["grid.png", "scores.png"] and shown[0]["subfolder"] == "likeness/test_00001"
    assert shown[0]["type"] == "output"

    # A second run never touches the first report.
    before = (folder / "report.json").read_bytes()
    report_nodes.ScoredGrid.execute(images=images, score_run=scored, labels=labels, filename_prefix="likeness/test")
    assert (output_dir / "likeness" / "test_00002" / "grid.png").is_file()
    assert (folder / "report.json").read_bytes() == before


def test_scored_grid_without_labels_is_a_contact_sheet(obama_refs, output_dir):
    images = torch.cat([image_batch([OBAMA[3], JOLIE[0]]), blank()])
    scored = scoring_nodes.ScoreImages.execute(images=images, references=obama_refs).args[3]
    out = report_nodes.ScoredGrid.execute(images=images, score_run=scored)
    folder = output_dir / "likeness" / "report_00001"
    assert (folder / "grid.png").is_file() and not (folder / "grid.json").exists()
    assert out.args[0].shape[0] == 1
    # Nothing says which LoRA made which image: no recommendation, and the output says why.
    assert out.args[2] == report_nodes.NO_RECOMMENDATION and not (folder / "recommendation.json").exists()


def _sweep_labels(layout):
    """Epoch Sweep's labels for ``(row, epoch, strength, seed)`` tuples (``no LoRA``: its baseline label)."""
    labels = []
    for row, epoch, strength, seed in layout:
        if row == NO_LORA:
            labels.append((NO_LORA, {"run": None, "epoch": None, "step": None, "strength": 0.0, "seed": seed, "lora": None,
                                     "row": NO_LORA, "column": "@0"}))
        else:
            labels.append((f"me {row} @{strength:g}", {"run": "me", "epoch": epoch, "step": None, "strength": strength,
                                                       "seed": seed, "lora": f"me-{epoch:06d}.safetensors", "row": row,
                                                       "column": f"@{strength:g}"}))
    return labels


def test_scored_grid_recommends_a_cell_with_the_cores_recommend(obama_refs, output_dir):
    # The baseline row (someone else), e1 at strength 0 (the same base images again), e1 mixed, e2 the
    # person; e2 @1 loses a face, so e2 @0.5 wins the tie on the mean by its lower no-face rate.
    layout = [(NO_LORA, None, 0.0, 1), (NO_LORA, None, 0.0, 2),
              ("e1", 1, 0.0, 1), ("e1", 1, 0.0, 2), ("e1", 1, 0.5, 1), ("e1", 1, 0.5, 2), ("e1", 1, 1.0, 1), ("e1", 1, 1.0, 2),
              ("e2", 2, 0.5, 1), ("e2", 2, 0.5, 2), ("e2", 2, 1.0, 1), ("e2", 2, 1.0, 2)]
    pictures = [JOLIE[0], JOLIE[1], JOLIE[0], JOLIE[1], JOLIE[0], None, OBAMA[3], JOLIE[1], OBAMA[3], OBAMA[3], OBAMA[3], None]
    images = torch.cat([image_batch([path]) if path is not None else blank() for path in pictures])
    labels = _sweep_labels(layout)
    scored = scoring_nodes.ScoreImages.execute(images=images, references=obama_refs, labels=labels).args[3]
    advice = report_nodes.ScoredGrid.execute(images=images, score_run=scored, labels=labels).args[2]
    folder = output_dir / "likeness" / "report_00001"
    saved = json.loads((folder / "recommendation.json").read_text())

    # The records the node gives the core: rows as checkpoints, the floor once per seed.
    records = report_nodes.recommendation_records(scored, labels)
    value = [item.score.value("max") for item in scored.run.images]
    assert [(r["checkpoint"], r["strength"], r["key"]) for r in records][:2] == [(NO_LORA, None, (1, 0)), (NO_LORA, None, (2, 0))]
    assert sum(r["checkpoint"] == NO_LORA for r in records) == 2  # e1 @0 repeats the baseline images: left out
    assert [r["score"] for r in records if r["checkpoint"] == "e2"] == value[8:]
    expected = recommend(cells_from_records(records), ceiling=obama_refs.references.baseline.mean)
    assert saved == json.loads(json.dumps(expected.as_dict()))  # the core's answer, unchanged

    assert saved["best"] == "e2 @ 0.5" and advice.splitlines()[0] == expected.headline()
    # grid.png carries the recommendation on a band under the cells (drawn by the core, as under A1111's grid)
    from PIL import Image

    cells_only, _ = report_nodes.grid_image(report_nodes.tensor_to_arrays(images), scored, labels)
    unconnected, _ = report_nodes.grid_image(None, scored, labels)  # images left unconnected: the ones Score Images scored
    assert np.array_equal(np.asarray(unconnected), np.asarray(cells_only))
    with Image.open(folder / "grid.png") as saved_grid:
        assert saved_grid.width == cells_only.width and saved_grid.height > cells_only.height
        band = np.asarray(saved_grid.convert("L"))[cells_only.height:]
        assert (band < 80).any()  # dark headline text in the band
    assert advice.startswith("Recommended: e2 @ 0.5 — identity ")
    assert saved["floor"] == pytest.approx((value[0] + value[1]) / 2)
    assert saved["ceiling"] == pytest.approx(obama_refs.references.baseline.mean)
    by_label = {cell["label"]: cell for cell in saved["cells"]}
    assert by_label[NO_LORA]["stats"]["n_images"] == 2 and by_label["e1 @ 1"]["stats"]["n_images"] == 2
    assert [line.removeprefix("warning: ") for line in advice.splitlines()[1:]] == expected.warnings
    grid_layout = json.loads((folder / "grid.json").read_text())
    assert grid_layout["rows"] == [NO_LORA, "e1", "e2"] and grid_layout["columns"] == ["@0", "@0.5", "@1"]
    assert grid_layout["recommended"] == {"row": "e2", "column": "@0.5"}


def test_scored_grid_with_people_gives_each_persons_scores_and_the_worst_served_recommendation(face_model, obama_refs, output_dir):
    from lora_likeness.people_sweep import recommend_people_records

    jolie_refs = faces_nodes.ReferenceFaces.execute(face_model, "max", images=image_batch(JOLIE[:4])).args[0]
    people = faces_nodes.People.execute("obama, jolie", references_1=obama_refs, references_2=jolie_refs).args[0]
    # no LoRA: jolie alone; e1: obama twice in one picture (jolie missing, blended), both in the other; e2: both, twice.
    layout = [(NO_LORA, None, 0.0, 1), (NO_LORA, None, 0.0, 2), ("e1", 1, 1.0, 1), ("e1", 1, 1.0, 2), ("e2", 2, 1.0, 1), ("e2", 2, 1.0, 2)]
    pictures = [(JOLIE[5],), (JOLIE[6],), (OBAMA[3], OBAMA[3]), (OBAMA[3], JOLIE[5]), (OBAMA[3], JOLIE[7]), (OBAMA[3], JOLIE[6])]
    images = torch.cat([side_by_side(*photos) for photos in pictures])
    labels = _sweep_labels(layout)
    scored = scoring_nodes.ScoreImages.execute(images=images, references=people, labels=labels).args[3]
    advice = report_nodes.ScoredGrid.execute(images=images, score_run=scored, labels=labels).args[2]
    folder = output_dir / "likeness" / "report_00001"

    # The core's family answer over the node's own records: the node makes one call, it does not decide.
    records = report_nodes.recommendation_records(scored, labels)
    assert [r["people"] is scored.run.images[i].people for i, r in enumerate(records)] == [True] * 6
    expected = recommend_people_records(people.people, records, seed=scored.run.settings.seed, n_boot=scored.run.settings.n_boot)
    assert expected.best.cell.label == "e2 @ 1" and expected.result_for("e1", 1.0).stats.worst_served == "jolie"
    assert advice.splitlines()[0] == expected.sentence() and advice.startswith("Best for the whole family: e2 @ 1")
    assert "obama 0." in advice.splitlines()[0] and "jolie 0." in advice.splitlines()[0]
    saved = json.loads((folder / "recommendation.json").read_text())
    assert saved["people"]["best"]["checkpoint"] == "e2" and saved["people"] == json.loads(json.dumps(expected.as_dict()))

    # grid.json: each cell with each person's scores; the family's cell recommended.
    grid_layout = json.loads((folder / "grid.json").read_text())
    assert grid_layout["recommended"] == {"row": "e2", "column": "@1"}
    cells = {(c["row"], c["column"]): c for c in grid_layout["cells"]}
    e1 = cells[("e1", "@1")]
    assert e1["people"]["people"]["jolie"]["presence_rate"] == 0.5 and e1["people"]["blend_rate"] == 0.5
    assert e1["people"]["people"]["obama"]["presence_rate"] == 1.0 and e1["people"]["worst_served"] == "jolie"
    assert e1["people_text"].startswith("obama .") and "jolie ." in e1["people_text"] and e1["people_text"].endswith("blend 50%")
    assert cells[(NO_LORA, "@0")]["people"]["people"]["obama"]["presence_rate"] == 0.0
    # The band under the grid: the family answer and one line per cell with each person's scores.
    cells_only, _ = report_nodes.grid_image(None, scored, labels)
    band_lines = advice.splitlines() + report_nodes.people_lines(grid_layout)
    assert "e1 @1: " + e1["people_text"] in band_lines
    from PIL import Image

    with Image.open(folder / "grid.png") as saved_grid:
        assert saved_grid.height >= cells_only.height + 14 * len(band_lines)


def test_scored_grid_errors(obama_refs, output_dir):
    images = torch.cat([image_batch([OBAMA[3]]), blank()])
    scored = scoring_nodes.ScoreImages.execute(images=images, references=obama_refs).args[3]
    with pytest.raises(ValueError, match="got 1 images but the score run has 2"):
        report_nodes.ScoredGrid.execute(images=images[:1], score_run=scored)
    with pytest.raises(ValueError, match="points outside ComfyUI's output folder"):
        report_nodes.ScoredGrid.execute(images=images, score_run=scored, filename_prefix="../../elsewhere/report")


# --------------------------------------------------------------------------------------------
# Score Training Samples (issue 14): a trainer's sample folder, or a training node's validation images


trainer_nodes = sys.modules[pack.__name__ + ".trainer_samples"]


@pytest.fixture(scope="module")
def powell_refs(face_model):
    from trainer_layouts import REFERENCE_PHOTOS

    return faces_nodes.ReferenceFaces.execute(face_model, "max", images=image_batch(REFERENCE_PHOTOS)).args[0]


def test_score_training_samples_reads_a_trainers_folder(powell_refs, tmp_path):
    from trainer_layouts import BEST_STEP, LAYOUTS, STEPS

    samples = LAYOUTS["onetrainer"](tmp_path)
    summary, best_step, curves, scored = trainer_nodes.ScoreTrainingSamples.execute(references=powell_refs, folder=str(samples)).args
    assert best_step == BEST_STEP
    assert [g.info["step"] for g in scored.run.groups] == STEPS
    assert f"best so far: step {BEST_STEP}" in summary and "likely over-training" in summary
    assert "closest saved checkpoint: save/" in summary  # OneTrainer's save/ folder beside samples/
    assert tuple(curves.shape[:1]) == (1,) and curves.shape[-1] == 3 and curves.shape[1] > 100
    with pytest.raises(ValueError, match="type the trainer's sample folder"):
        trainer_nodes.ScoreTrainingSamples.execute(references=powell_refs)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        trainer_nodes.ScoreTrainingSamples.execute(references=powell_refs, folder=str(tmp_path / "missing"))


def test_score_training_samples_keeps_validation_images_by_step(powell_refs, output_dir):
    from trainer_layouts import BEST_STEP, STEPS, sample_photo

    best_steps = []
    for step in STEPS:  # FluxTrainer's validation after each loop: 4 prompts, the loop's step count
        images = image_batch([sample_photo(step, prompt) for prompt in range(4)])
        out = trainer_nodes.ScoreTrainingSamples.execute(references=powell_refs, validation_images=images, step=step).args
        best_steps.append(out[1])
    assert best_steps == [250, 500, 750, 750, 750]
    run = out[3].run
    assert [g.info["step"] for g in run.groups] == STEPS and run.verdict.best_step == BEST_STEP
    assert run.verdict.recommendation.paired  # the validation prompts pair up across steps
    assert sorted(p.name for p in (output_dir / "likeness_validation").iterdir()) == [f"step_{s:06d}" for s in STEPS]


def test_recommend_output_when_no_cell_shows_the_whole_family():
    """The Recommend output and grid.json's recommended cell take the core's "none" answer as it is."""
    from lora_likeness.people import PeopleSet, people_in_image
    from lora_likeness.people_sweep import recommend_people_records
    from test_people import A1, A2, B1, B2, reference_set

    family = PeopleSet.build({"A": reference_set(A1, A2), "B": reference_set(B1, B2)})
    records = [{"checkpoint": f"e{i}", "strength": 1.0, "epoch": i, "people": people_in_image(family, [A1])} for i in (1, 2)]
    people = recommend_people_records(family, records, n_boot=50)
    classic = recommend(cells_from_records([{"checkpoint": f"e{i}", "strength": 1.0, "epoch": i, "score": 0.8} for i in (1, 2)]))
    text = report_nodes.recommendation_text(classic, people)
    assert text.splitlines()[0].startswith("No recommendation for the whole family: no cell shows every person: B never appears")
    assert "B missing (0%) in every cell" in text.splitlines()[0]
    labels = [(f"e{i}", {"checkpoint": f"e{i}", "strength": 1.0, "row": "0", "column": str(i)}) for i in (1, 2)]
    assert report_nodes.recommended_cell(classic, labels, people) is None
