"""Face Model and Reference Faces: load an insightface pack once; turn photos into a reference set."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from lora_likeness import faces, grid, pipeline
from lora_likeness.cache import FaceCache
from lora_likeness.images import decode_image
from lora_likeness.people import PeopleSet
from lora_likeness.references import ReferenceSet, reference_names
from lora_likeness.scoring import AGGREGATIONS
from PIL import Image

from . import host
from .host import io
from .types import CATEGORY, FaceModelType, References, ReferencesType, arrays_to_tensor, tensor_to_arrays

log = logging.getLogger("lora_likeness.comfyui")

PROVIDERS = ("auto", "cpu", "cuda", "rocm", "directml", "coreml", "openvino")
THUMBNAIL = 192  # px, side of each reference face in the preview

#: A missing pack, said in ComfyUI's terms: its models folder and the node's pack_path input.
PACK_ADVICE = faces.PackAdvice(
    install=f"ComfyUI/models/{host.INSIGHTFACE_FOLDER}/models/{{pack}}/ (or a folder named '{{pack}}' in one of the places "
            f"above: extra_model_paths.yaml's '{host.INSIGHTFACE_FOLDER}:' entries count) and refresh the page",
    point_to_folder="or type the pack's folder in Face Model's pack_path input",
    folder_missing="pack_path must be a folder that holds the pack's .onnx files (e.g. "
                   f"ComfyUI/models/{host.INSIGHTFACE_FOLDER}/models/buffalo_l); clear it to use the pack chosen in 'pack'.",
    download="Public packs (buffalo_l, buffalo_s, antelopev2) are on insightface's release page (non-commercial licence); "
             "ReActor, IPAdapter FaceID and InstantID users often have buffalo_l or antelopev2 there already.",
)


def load_engine(pack: str, provider: str) -> faces.FaceEngine:
    """One engine per (pack folder, provider) for the whole process (the core keeps them)."""
    try:
        return faces.shared_engine(pack, provider)
    except faces.PackNotFoundError as exc:
        raise exc.phrased(PACK_ADVICE) from exc


class FaceModel(io.ComfyNode):
    """An insightface pack (detector + recogniser) from ``models/insightface/models/``."""

    @classmethod
    def define_schema(cls):
        packs = host.installed_packs()
        # A pack must be selectable even when none is installed, so the node can say where to put one.
        options = packs or [faces.DEFAULT_PACK]
        default = faces.DEFAULT_PACK if faces.DEFAULT_PACK in options else options[0]
        return io.Schema(
            node_id="LikenessFaceModel",
            display_name="Face Model",
            category=CATEGORY,
            description=(
                "Loads an insightface face-model pack (detector + ArcFace recogniser) once. Packs live in "
                "ComfyUI/models/insightface/models/<pack>/ (buffalo_l, antelopev2, …; folders from "
                "extra_model_paths.yaml's 'insightface:' entries too)."
            ),
            inputs=[
                io.Combo.Input("pack", options=options, default=default,
                               tooltip="Face-model pack folder found in models/insightface/models/."),
                io.Combo.Input("provider", options=list(PROVIDERS), default="auto",
                               tooltip="onnxruntime device: auto takes the GPU when this onnxruntime build has one."),
                io.String.Input("pack_path", default="", optional=True,
                                tooltip="Optional: a pack folder anywhere on disk; overrides 'pack'."),
            ],
            outputs=[FaceModelType.Output("face_model", display_name="face_model")],
        )

    @classmethod
    def execute(cls, pack: str, provider: str = "auto", pack_path: str = ""):
        host.register_face_model_folders()
        chosen = pack_path.strip() or pack
        engine = load_engine(chosen, provider)
        for message in engine.warnings:
            log.warning("[Likeness] %s", message)
        return io.NodeOutput(engine)


# --------------------------------------------------------------------------------------------


def face_thumbnail(rgb: np.ndarray, box, size: int = THUMBNAIL) -> Image.Image:
    """A square crop around a face box ``(x1, y1, x2, y2)`` with some context, ``size`` px."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = 1.6 * max(x2 - x1, y2 - y1, 1.0)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top, width = round(cx - side / 2), round(cy - side / 2), round(side)
    crop = Image.fromarray(rgb).crop((left, top, left + width, top + width))  # pads with black
    return crop.resize((size, size), Image.Resampling.LANCZOS)


def whole_thumbnail(rgb: np.ndarray | None, size: int = THUMBNAIL) -> Image.Image:
    canvas = Image.new("RGB", (size, size), (40, 40, 40))
    if rgb is not None:
        image = Image.fromarray(rgb)
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return canvas


def reference_preview(references: ReferenceSet, results, sources) -> list[Image.Image]:
    """One tile per reference photo: its face with its leave-one-out score (``outlier?`` noted),
    or the whole photo marked ``no face`` when it was left out."""
    tiles = []
    for photo, result, source in zip(references.photos, results, sources):
        rgb, scale = source() if callable(source) else source
        if photo.row is not None and rgb is not None:
            face = result.faces[photo.face_index]
            tile = face_thumbnail(rgb, np.asarray(face.box) / scale)
            if photo.loo is not None:
                tile = grid.draw_score(tile, photo.loo, baseline=references.baseline.mean,
                                       note="outlier?" if photo.outlier else None)
        else:
            tile = grid.draw_score(whole_thumbnail(rgb), None, note=None if photo.error == "no face found" else "unreadable")
        tiles.append(tile)
    return tiles


def describe_references(references: ReferenceSet, source: str) -> str:
    """Plain-text summary: how many faces, the baseline, and every warning."""
    b = references.baseline
    lines = [f"{references.n} reference face(s) from {len(references.photos)} photo(s) ({source})"]
    if b.mean is not None:
        lines.append(
            f"baseline ({b.aggregation}, each photo against the others): mean {b.mean:.3f}, min {b.min:.3f}, max {b.max:.3f}"
        )
    for photo in references.photos:
        state = "skipped: " + photo.error if photo.error else (
            f"loo {photo.loo:.3f}" + (" OUTLIER?" if photo.outlier else "") if photo.loo is not None else "used"
        )
        lines.append(f"  {photo.path}: {state}")
    lines += [f"warning: {w}" for w in references.warnings]
    return "\n".join(lines)


def folder_fingerprint(folder: str | None) -> str:
    """:func:`_folder_fingerprint` of a folder typed into a node (a relative one in ComfyUI's input folder)."""
    text = (folder or "").strip()
    return _folder_fingerprint(str(host.resolve_folder(text)) if text else "")


def _folder_fingerprint(folder: str) -> str:
    """Changes when files are added, removed or rewritten, so ComfyUI re-runs the node."""
    digest = hashlib.sha256(folder.encode())
    root = Path(folder.strip()).expanduser()
    if root.is_dir():
        for path in pipeline.collect_images(root):
            stat = path.stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


class ReferenceFaces(io.ComfyNode):
    """Real photos of the person -> reference embeddings, with their baseline and a face preview."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessReferenceFaces",
            display_name="Reference Faces",
            category=CATEGORY,
            description=(
                "Real photos of the person (an IMAGE batch, a folder, or both) -> reference faces. Shows each "
                "face with how well it matches the others (the baseline a LoRA can reach) and warns about photos "
                "that look like someone else."
            ),
            inputs=[
                FaceModelType.Input("face_model"),
                io.Combo.Input("aggregation", options=list(AGGREGATIONS), default="max",
                               tooltip="max: best-matching reference photo; mean: mean over them; ism: the mean face."),
                io.Image.Input("images", optional=True, tooltip="Reference photos as an IMAGE batch."),
                io.String.Input("folder", default="", optional=True,
                                tooltip="A folder of reference photos (searched recursively); a relative path is looked "
                                        "up in ComfyUI's input folder."),
            ],
            outputs=[
                ReferencesType.Output("references", display_name="references"),
                io.Image.Output("faces", display_name="faces"),
                io.String.Output("summary", display_name="summary"),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, face_model=None, aggregation="max", images=None, folder=""):
        return folder_fingerprint(folder)

    @classmethod
    def execute(cls, face_model, aggregation: str = "max", images=None, folder: str = ""):
        engine: faces.FaceEngine = face_model
        folder = (folder or "").strip()
        if images is None and not folder:
            raise ValueError(
                "Reference Faces has no photos: connect an IMAGE batch (e.g. Load Image) or type the path of a "
                "folder of photos of the person."
            )
        cache = FaceCache()
        results, names, sources, parts = [], [], [], []
        if images is not None:
            arrays = tensor_to_arrays(images, "reference images")
            batch_names = [f"image {i + 1}" for i in range(len(arrays))]
            results += pipeline.analyze_arrays(engine, arrays, batch_names, cache=cache, progress=host.HostProgress(),
                                               description="reference photos")
            names += batch_names
            sources += [(a, 1.0) for a in arrays]
            parts.append(f"{len(arrays)} image(s) from the batch")
        if folder:
            root = host.resolve_folder(folder)
            if not root.exists():
                raise FileNotFoundError(f"Reference Faces: folder {root} does not exist")
            paths = pipeline.collect_images(root)
            results += pipeline.analyze_paths(engine, paths, cache=cache, progress=host.HostProgress(),
                                              description="reference photos")
            names += reference_names(paths, root if root.is_dir() else None)
            sources += [_lazy_source(p) for p in paths]
            parts.append(f"folder {root}")
        source = " + ".join(parts)
        references = ReferenceSet.from_results(results, names, aggregation=aggregation)  # NoReferencesError if empty
        for message in references.warnings:
            log.warning("[Likeness] %s", message)
        tiles = reference_preview(references, results, sources)
        preview = arrays_to_tensor(tiles)
        summary = describe_references(references, source)
        return io.NodeOutput(References(engine, references, source), preview, summary,
                             ui=host.preview_images(preview, cls))


#: How many Reference Faces the People node joins.
MAX_PEOPLE = 4


class People(io.ComfyNode):
    """Several Reference Faces, each named -> one people set (a family LoRA): Score Images then finds and
    scores every person in every image."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessPeople",
            display_name="People (family LoRA)",
            category=CATEGORY,
            description=(
                "Joins the Reference Faces of several people into one set, each with a name (their trigger word). Score "
                "Images then assigns every face to one person, scores each person, reports who is missing and whether "
                "faces blended, and labels each face with its person's name. Each person's acceptance threshold comes "
                "from the reference photos (halfway between their least typical own photo and the most alike photo of "
                "someone else)."
            ),
            inputs=[
                io.String.Input("names", default="",
                                tooltip="The people's names (trigger words), comma-separated, in the order of the connected "
                                        "references inputs."),
                *[ReferencesType.Input(f"references_{i}", optional=True) for i in range(1, MAX_PEOPLE + 1)],
            ],
            outputs=[
                ReferencesType.Output("people", display_name="people"),
                io.String.Output("summary", display_name="summary"),
            ],
        )

    @classmethod
    def execute(cls, names: str = "", references_1=None, references_2=None, references_3=None, references_4=None):
        from lora_likeness.pipeline import people_references

        connected = [r for r in (references_1, references_2, references_3, references_4) if r is not None]
        given = [name.strip() for name in (names or "").split(",") if name.strip()]
        if not connected:
            raise ValueError("People: connect the Reference Faces of at least one person (references_1, references_2, …)")
        if len(given) != len(connected):
            raise ValueError(f"People: {len(connected)} references connected but {len(given)} name(s) given ({names!r}); "
                             f"give one name per connected references input, comma-separated, in order")
        engines = {id(r.engine) for r in connected}
        if len(engines) > 1:
            raise ValueError("People: every Reference Faces must use the same Face Model (scores of different packs do not compare)")
        aggregation = connected[0].references.baseline.aggregation
        people = PeopleSet.build(list(zip(given, (r.references for r in connected))), aggregation=aggregation)
        for message in people.warnings:
            log.warning("[Likeness] %s", message)
        source = " + ".join(f"{name}: {r.source}" for name, r in zip(given, connected))
        summary = "\n".join([f"{name}: {r.references.n} photo(s), acceptance threshold {people.thresholds[i]:.3f}"
                             for i, (name, r) in enumerate(zip(given, connected))] + [f"warning: {w}" for w in people.warnings])
        return io.NodeOutput(References(connected[0].engine, people_references(people), source, people=people), summary)


def _lazy_source(path: Path):
    """Decode a reference photo again only for its preview tile: ``(rgb, source px per px)``."""

    def load():
        loaded = decode_image(path, max_side=1024)
        return loaded.rgb, loaded.scale

    return load


NODES = [FaceModel, ReferenceFaces, People]
