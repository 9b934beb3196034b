"""Prompt adherence with a tiny random CLIP model saved as safetensors: finite, deterministic scores that
depend on the prompt; model folders found in an offline Hugging Face cache; pickled weights refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from training_stack import require_training_stack

torch = require_training_stack()  # the `train` extra; CI installs it through `test`

from lora_likeness.sweep.adherence import (
    ClipModelError,
    PromptAdherence,
    clip_folder_problem,
    clip_score,
    find_clip_model,
    hf_hub_cache,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TOKENIZER = SHARED / "tokenizers" / "sd1_clip"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def write_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A random CLIPModel (32-wide text and vision towers, SD1's 49408-token vocabulary, 32-px images)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                     "max_position_embeddings": 77, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(40 + 8 * i, 48, 3), dtype=np.uint8) for i in range(n)]


def test_scores_are_finite_deterministic_and_depend_on_the_prompt(clip_folder):
    scorer = PromptAdherence.load(clip_folder, batch_size=2)
    images = _images(3)
    prompts = ["photo of ohwx person on a beach", "photo of ohwx person in a forest", "a red car"]
    scores = scorer.score(images, prompts)
    assert len(scores) == 3 and all(np.isfinite(scores)) and all(-1.0 <= s <= 1.0 for s in scores)
    again = PromptAdherence.load(clip_folder).score(images, prompts)  # another batch size, a fresh model
    assert np.allclose(scores, again, atol=1e-5)
    other = scorer.score(images, ["an astronaut riding a horse"])  # one prompt for every image
    assert all(abs(a - b) > 1e-4 for a, b in zip(scores, other))
    # The same image scores differently against different prompts, and one pair is the same alone or in a batch.
    pair = scorer.score([images[0]] * 2, prompts[:2])
    assert abs(pair[0] - pair[1]) > 1e-4 and abs(pair[0] - scores[0]) < 1e-5
    # Cosine by hand from the embeddings.
    manual = float(torch.nn.functional.cosine_similarity(scorer.image_embeddings(images[:1]), scorer.text_embeddings(prompts[:1])))
    assert abs(manual - scores[0]) < 1e-5
    assert clip_score(0.31) == pytest.approx(31.0) and clip_score(-0.2) == 0.0
    assert scorer.score([], []) == []
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        scorer.score(images, prompts[:2])
    with pytest.raises(ValueError, match="RGB uint8"):
        scorer.score([np.zeros((8, 8), dtype=np.uint8)], ["x"])


def test_pickled_weights_are_refused(tmp_path, caplog):
    folder = write_tiny_clip(tmp_path / "bin-only")
    # An old repository layout: the same weights as a pickle (written here; Likeness must never read it).
    from safetensors.torch import load_file

    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ClipModelError, match="only .bin weights .*never loads"):
        PromptAdherence.load(folder)
    assert find_clip_model(folder) is None  # the sweep goes on without adherence; the reason is in the log
    assert "only .bin weights" in caplog.text


def test_found_in_the_offline_hugging_face_cache(clip_folder, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    # The shared SD1 tokenizer folder stands as a clip-vit-large-patch14 snapshot for A1111: config, no weights.
    large = cache / "models--openai--clip-vit-large-patch14"
    shutil.copytree(TOKENIZER, large / "snapshots" / "aaa")
    (large / "refs").mkdir()
    (large / "refs" / "main").write_text("aaa")
    assert "no .safetensors weights" in clip_folder_problem(large / "snapshots" / "aaa")
    assert find_clip_model(cache=cache) is None
    base = cache / "models--openai--clip-vit-base-patch32" / "snapshots" / "bbb"
    shutil.copytree(clip_folder, base)
    assert find_clip_model(cache=cache) == base
    shutil.copytree(clip_folder, large / "snapshots" / "ccc")  # the preferred repository, though not refs/main
    assert find_clip_model(cache=cache) == large / "snapshots" / "ccc"
    assert PromptAdherence.load(find_clip_model(cache=cache)).name == "openai/clip-vit-large-patch14"

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert hf_hub_cache() == cache and find_clip_model() == large / "snapshots" / "ccc"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hf_hub_cache() == tmp_path / "home" / "hub" and find_clip_model() is None
    assert find_clip_model(clip_folder) == clip_folder


def test_unusable_folders_say_why(clip_folder, tmp_path):
    assert clip_folder_problem(tmp_path / "nothing").endswith("is not a folder")
    text_only = tmp_path / "text-only"
    shutil.copytree(clip_folder, text_only)
    config = json.loads((text_only / "config.json").read_text())
    del config["vision_config"]
    (text_only / "config.json").write_text(json.dumps(config))
    assert "not a CLIPModel config" in clip_folder_problem(text_only)
    no_processor = tmp_path / "no-processor"
    shutil.copytree(clip_folder, no_processor)
    (no_processor / "preprocessor_config.json").unlink()
    with pytest.raises(ClipModelError, match="preprocessor_config.json"):
        PromptAdherence.load(no_processor)
