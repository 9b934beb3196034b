"""Pack discovery, provider choice and the engine's identity."""

from __future__ import annotations

import shutil

import pytest

from likeness_assets import PACK_DIR
from lora_likeness import faces
from lora_likeness.cli import cli_pack_advice
from lora_likeness.faces import FaceEngine, FaceModelError, PackNotFoundError, detector_input_size, find_pack, inspect_pack


@pytest.fixture()
def clean_search(monkeypatch, tmp_path):
    """No real pack location leaks in: HOME, env vars and registered dirs point at tmp."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for variable in ("LIKENESS_MODELS_DIR", "COMFYUI_PATH", "COMFYUI_DIR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(faces, "_REGISTERED_DIRS", [])
    monkeypatch.setattr(faces, "_host_dirs_from_layout", lambda: [])
    return tmp_path


def _install_pack(root, name="mypack"):
    target = root / name
    target.mkdir(parents=True)
    for onnx in PACK_DIR.glob("*.onnx"):
        shutil.copy(onnx, target / onnx.name)
    return target


def test_missing_pack_names_every_place_searched(clean_search, monkeypatch):
    monkeypatch.setenv("LIKENESS_MODELS_DIR", str(clean_search / "models"))
    with pytest.raises(PackNotFoundError) as error:
        find_pack("buffalo_l")
    message = str(error.value)
    assert str(clean_search / "models" / "buffalo_l") in message
    assert str(clean_search / "home" / ".insightface" / "models" / "buffalo_l") in message
    # The core names no front door's options; each one phrases the advice in its own terms.
    assert "Put the pack's .onnx files in a folder named 'buffalo_l' in one of those places" in message
    assert "--pack" not in message and "likeness score" not in message and "ComfyUI" not in message
    cli = error.value.message(cli_pack_advice())
    assert "ComfyUI/models/insightface/models/buffalo_l" in cli and "--pack PATH" in cli and "likeness score --download" in cli
    host = error.value.phrased(faces.PackAdvice(install="HOST/{pack}/", point_to_folder="or use HOST's field",
                                                folder_missing="-", download=None))
    assert isinstance(host, PackNotFoundError) and host.searched == error.value.searched and host.pack == "buffalo_l"
    assert str(host).splitlines()[:-1] == message.splitlines()[:-1]  # the same places searched
    assert str(host).splitlines()[-1] == "Put the pack's .onnx files in HOST/buffalo_l/, or use HOST's field."


def test_missing_pack_folder_says_so(clean_search, tmp_path):
    with pytest.raises(PackNotFoundError, match=r"Face-model pack folder .*nowhere does not exist\. Give a folder") as error:
        find_pack(tmp_path / "nowhere")
    assert error.value.folder == tmp_path / "nowhere" and "--pack" not in str(error.value)
    assert "Pass --pack a folder" in error.value.message(cli_pack_advice())


def test_search_order_env_then_registered_then_comfyui_then_home(clean_search, monkeypatch):
    home_pack = _install_pack(clean_search / "home" / ".insightface" / "models")
    assert find_pack("mypack").path == home_pack.resolve()
    comfy = clean_search / "ComfyUI"
    comfy_pack = _install_pack(comfy / "models" / "insightface" / "models")
    monkeypatch.setenv("COMFYUI_PATH", str(comfy))
    assert find_pack("mypack").path == comfy_pack.resolve()
    registered = _install_pack(clean_search / "extra")
    faces.register_models_dir(clean_search / "extra", "extra_model_paths.yaml")
    assert find_pack("mypack").path == registered.resolve()
    env_pack = _install_pack(clean_search / "env")
    monkeypatch.setenv("LIKENESS_MODELS_DIR", str(clean_search / "env"))
    found = find_pack("mypack")
    assert found.path == env_pack.resolve() and found.source == "$LIKENESS_MODELS_DIR"
    assert found.detector.name == "det_500m.onnx" and found.recognizer.name == "mobilefacenet_128d.onnx"


def test_comfyui_layout_is_inferred_from_where_the_repo_is_cloned(tmp_path, monkeypatch):
    repo = tmp_path / "ComfyUI" / "custom_nodes" / "ComfyUI-Likeness"
    (repo / "core").mkdir(parents=True)
    monkeypatch.setattr(faces, "__file__", str(repo / "core" / "faces.py"))
    dirs = faces._host_dirs_from_layout()
    assert dirs == [("ComfyUI models folder", tmp_path / "ComfyUI" / "models" / "insightface" / "models")]


def test_unusable_packs_say_what_is_missing(clean_search, tmp_path):
    only_detector = tmp_path / "half"
    only_detector.mkdir()
    shutil.copy(PACK_DIR / "det_500m.onnx", only_detector / "det_500m.onnx")
    assert inspect_pack(only_detector)[1] is None
    with pytest.raises(FaceModelError, match="no face recogniser"):
        find_pack(only_detector)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FaceModelError, match="no .onnx files"):
        find_pack(empty)
    with pytest.raises(PackNotFoundError, match="does not exist"):
        find_pack(tmp_path / "nowhere")


def test_unknown_file_names_are_classified_from_the_graph(tmp_path):
    pack = tmp_path / "renamed"
    pack.mkdir()
    shutil.copy(PACK_DIR / "det_500m.onnx", pack / "model_a.onnx")
    shutil.copy(PACK_DIR / "mobilefacenet_128d.onnx", pack / "model_b.onnx")
    (pack / "broken.onnx").write_bytes(b"not onnx")
    detector, recognizer, problems = inspect_pack(pack)
    assert (detector.name, recognizer.name) == ("model_a.onnx", "model_b.onnx")
    assert any("broken.onnx" in p for p in problems)


def test_providers_and_fallback_warning():
    assert faces.resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert faces.resolve_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert faces.resolve_providers("auto")[-1] == "CPUExecutionProvider"
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.fail("this test expects a CPU-only onnxruntime, as in CI")
    engine = FaceEngine.load(PACK_DIR, providers="cuda")
    assert engine.providers[0] == "CPUExecutionProvider"
    assert any("asked onnxruntime for cuda but it runs on cpu" in w for w in engine.warnings)
    assert engine.describe()["providers"] == ["cpu"]


@pytest.mark.parametrize("gpus, noted", [(0, False), (1, True)])
def test_the_gpu_note_needs_a_usable_gpu_not_a_cuda_build_label(monkeypatch, gpus, noted):
    """A +cu130 torch on a machine without a GPU was told "face models run on CPU although torch has CUDA"."""
    from lora_likeness import dependencies

    monkeypatch.setattr(dependencies, "torch_kind", lambda paths=None: "cuda")  # torch 2.x+cu130
    monkeypatch.setattr(dependencies, "cuda_device_count", lambda: gpus)
    engine = FaceEngine.load(PACK_DIR, providers="cpu")
    assert any("face models run on CPU although this machine has a CUDA GPU" in w for w in engine.warnings) == noted


def test_cuda_device_count_asks_torch_if_imported_else_the_driver(monkeypatch):
    import ctypes
    import sys
    from types import SimpleNamespace

    from lora_likeness import dependencies

    fake_torch = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: False, device_count=lambda: 2))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    assert dependencies.cuda_device_count() == 0  # a CUDA build without a usable device
    fake_torch.cuda.is_available = lambda: True
    assert dependencies.cuda_device_count() == 2

    monkeypatch.delitem(sys.modules, "torch")  # not imported: the driver library answers, torch stays unimported

    def no_library(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_library)
    assert dependencies.cuda_device_count() == 0 and "torch" not in sys.modules

    class Driver:
        def __init__(self, init_result):
            self.init_result = init_result

        def cuInit(self, flags):
            return self.init_result

        def cuDeviceGetCount(self, pointer):
            pointer._obj.value = 3
            return 0

    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, **k: Driver(0))
    assert dependencies.cuda_device_count() == 3
    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, **k: Driver(100))  # CUDA_ERROR_NO_DEVICE
    assert dependencies.cuda_device_count() == 0


def test_fingerprint_depends_on_detection_settings(engine):
    other = FaceEngine.load(PACK_DIR, providers="cpu", det_thresh=0.6)
    assert engine.fingerprint != other.fingerprint
    assert engine.fingerprint == FaceEngine.load(PACK_DIR, providers="cpu").fingerprint
    assert engine.embedding_dim == 128


@pytest.mark.parametrize(
    "size, expected",
    [((512, 512), (640, 640)), ((512, 768), (448, 640)), ((1024, 1024), (640, 640)), ((250, 250), (640, 640)),
     ((1920, 1080), (640, 448)), ((2, 2), (640, 640)), ((1000, 300), (640, 320))],
)
def test_detector_input_size_keeps_the_aspect_without_padding(size, expected):
    assert detector_input_size(*size) == expected
