"""Captions: ``<trigger> <class>`` first, then the framing, then optional tags from a local tagger.

That order suits sd-scripts' ``keep_tokens``: with ``shuffle_caption`` the first ``keep_tokens``
comma-separated parts stay in place, so the identity part (one per person in the image) never
moves while the rest is shuffled.

A tagger is optional and never required: any callable ``rgb (H, W, 3) uint8 -> list[str]`` works
(hosts can pass their own), and :class:`WD14Tagger` runs a WD14-style ONNX tagger from a local
folder (``model.onnx`` + ``selected_tags.csv``, as SmilingWolf's wd-v1-4 / wd-v3 taggers ship).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .config import FRAMING_WORDS

Tagger = Callable[[np.ndarray], list[str]]


def identity_part(trigger: str, class_word: str) -> str:
    return f"{trigger} {class_word}"


def build_caption(identities: Sequence[tuple[str, str]], framing: str, tags: Sequence[str] = (), exclude: Sequence[str] = ()) -> str:
    """``"ohwx man, close-up, tag, tag"``; several people: ``"ohwxa man, ohwxb woman, upper body"``.

    Args:
        identities: ``(trigger, class word)`` of each person in the image, in a stable order.
        framing: a key of :data:`FRAMING_WORDS`.
        tags: extra tags (from a tagger), appended in order; duplicates, the framing word, the
            trigger/class words and ``exclude`` are dropped.
    """
    parts = [identity_part(t, c) for t, c in identities]
    framing_word = FRAMING_WORDS[framing]
    parts.append(framing_word)
    seen = {p.lower() for p in parts} | {t.lower() for t, _ in identities} | {c.lower() for _, c in identities}
    seen |= {e.lower() for e in exclude}
    for tag in tags:
        clean = tag.strip().replace(",", " ")
        if clean and clean.lower() not in seen:
            parts.append(clean)
            seen.add(clean.lower())
    return ", ".join(parts)


class WD14Tagger:
    """A WD14-style image tagger run with onnxruntime from a local folder (no download).

    The folder holds ``model.onnx`` (input ``(N, S, S, 3)`` float32 BGR 0..255, output one
    probability per tag) and ``selected_tags.csv`` (``tag_id,name,category,count``; category 0 is
    a general tag, 4 a character, 9 a rating). Only general tags at or above ``threshold`` are
    returned, most probable first, underscores as spaces (as sd-scripts' tagger writes them).
    """

    def __init__(self, folder: Path, threshold: float = 0.35, providers: Sequence[str] | None = None) -> None:
        import onnxruntime

        folder = Path(folder)
        model, table = folder / "model.onnx", folder / "selected_tags.csv"
        for needed in (model, table):
            if not needed.is_file():
                raise FileNotFoundError(f"tagger folder {folder} lacks {needed.name} (needs model.onnx and selected_tags.csv)")
        with open(table, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        if not rows or [c.strip().lower() for c in rows[0][:3]] != ["tag_id", "name", "category"]:
            raise ValueError(f"{table}: expected a header starting tag_id,name,category")
        self.names = [row[1] for row in rows[1:]]
        self.general = np.array([row[2].strip() == "0" for row in rows[1:]])
        self.threshold = float(threshold)
        self.session = onnxruntime.InferenceSession(str(model), providers=list(providers or ["CPUExecutionProvider"]))
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        side = model_input.shape[1]
        self.side = int(side) if isinstance(side, int) else 448

    def _prepare(self, rgb: np.ndarray) -> np.ndarray:
        from PIL import Image

        height, width = rgb.shape[:2]
        side = max(height, width)
        canvas = np.full((side, side, 3), 255, dtype=np.uint8)  # pad to square with white, as trained
        top, left = (side - height) // 2, (side - width) // 2
        canvas[top : top + height, left : left + width] = rgb
        resized = np.asarray(Image.fromarray(canvas).resize((self.side, self.side), Image.Resampling.BICUBIC))
        return resized[:, :, ::-1].astype(np.float32)[None]  # BGR

    def __call__(self, rgb: np.ndarray) -> list[str]:
        probabilities = np.asarray(self.session.run(None, {self.input_name: self._prepare(rgb)})[0], dtype=np.float64).ravel()
        count = min(len(probabilities), len(self.names))
        order = np.argsort(-probabilities[:count], kind="stable")
        tags = []
        for index in order:
            if probabilities[index] < self.threshold:
                break
            if self.general[index]:
                name = self.names[index]
                tags.append(name.replace("_", " ") if len(name) > 3 else name)
        return tags
