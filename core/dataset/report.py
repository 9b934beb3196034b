"""``report.json``, ``report.html`` and the contact sheets of a dataset run.

The HTML page is self-contained apart from the two contact sheets beside it: what was kept (the
crops as written, with framing and score), what was rejected (the source photo with its faces
boxed: green the person looked for, grey everyone else) and, in tables, every rejected file by its
source path with the reason, the thresholds in force, the Kohya subsets and, for several
identities, the coverage matrix of identity subsets.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from ..images import write_bytes_atomic, write_text_atomic
from .records import REJECTION_CODES, PhotoRecord, PrepareResult

CELL = 200
COLUMNS = 6
#: At most this many tiles per contact sheet (the tables list everything).
SHEET_LIMIT = 240


def report_json(result: PrepareResult) -> str:
    return json.dumps(result.as_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _tile(thumb: bytes | None, title: str, subtitle: str, colour, boxes=(), font=None, small=None) -> Image.Image:
    """A :data:`CELL`-sized tile: the JPEG ``thumb`` with ``boxes`` (``(box, colour, scale)``)
    drawn on it, a title and a subtitle."""
    canvas = Image.new("RGB", (CELL, CELL), (28, 28, 28))
    draw = ImageDraw.Draw(canvas)
    area = CELL - 34
    if thumb is not None:
        image = Image.open(io.BytesIO(thumb)).convert("RGB")
        factor = min(CELL / image.width, area / image.height)
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        image = image.resize(size, Image.Resampling.BILINEAR)
        offset = ((CELL - size[0]) // 2, (area - size[1]) // 2)
        canvas.paste(image, offset)
        for box, box_colour, scale in boxes:
            scaled = [box[0] * scale * factor + offset[0], box[1] * scale * factor + offset[1],
                      box[2] * scale * factor + offset[0], box[3] * scale * factor + offset[1]]
            draw.rectangle(scaled, outline=box_colour, width=2)
    else:
        draw.text((6, 6), "unreadable", fill=(230, 80, 80), font=font)
    draw.rectangle([0, area, CELL, CELL], fill=(0, 0, 0))
    draw.text((4, area + 1), title[:30], fill=colour, font=font)
    draw.text((4, area + 17), subtitle[-36:], fill=(200, 200, 200), font=small)
    return canvas


def contact_sheet(tiles: Sequence[Image.Image], heading: str) -> Image.Image:
    """Tiles in rows of :data:`COLUMNS` under a one-line heading."""
    from ..grid import font as _font

    rows = max(1, math.ceil(len(tiles) / COLUMNS))
    sheet = Image.new("RGB", (COLUMNS * CELL, 28 + rows * CELL), (16, 16, 16))
    ImageDraw.Draw(sheet).text((6, 5), heading, fill=(235, 235, 235), font=_font(15))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % COLUMNS) * CELL, 28 + (i // COLUMNS) * CELL))
    return sheet


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def rejected_tiles(records: Sequence[PhotoRecord]) -> list[Image.Image]:
    from ..grid import font as _font

    font, small = _font(13), _font(10)
    tiles = []
    for record in [r for r in records if r.code is not None][:SHEET_LIMIT]:
        boxes = []
        if record.thumb is not None and record.size[0]:
            with Image.open(io.BytesIO(record.thumb)) as thumb:
                scale = thumb.width / record.size[0]
            chosen = set(record.identities.values())
            boxes = [(f.box, (60, 200, 90) if j in chosen else (150, 150, 150), scale) for j, f in enumerate(record.faces)]
        tiles.append(_tile(record.thumb, record.code, record.rel, (240, 120, 90), boxes, font, small))
    return tiles


def write_reports(result: PrepareResult, records: Sequence[PhotoRecord], kept_thumbs: Sequence[tuple[bytes, str, str]], folder: Path) -> None:
    """Write ``report.json``, ``report.html``, ``contact_kept.jpg`` and ``contact_rejected.jpg``."""
    from ..grid import font as _font

    folder = Path(folder)
    font, small = _font(13), _font(10)
    kept_tiles = [_tile(thumb, title, source, (120, 220, 120), (), font, small) for thumb, title, source in kept_thumbs[:SHEET_LIMIT]]
    write_bytes_atomic(folder / "contact_kept.jpg", _jpeg(contact_sheet(kept_tiles, f"kept: {len(result.kept)} images (framing, score)")))
    write_bytes_atomic(folder / "contact_rejected.jpg", _jpeg(contact_sheet(rejected_tiles(records), f"rejected: {len(result.rejected)} photos (reason)")))
    write_text_atomic(folder / "report.json", report_json(result))
    write_text_atomic(folder / "report.html", report_html(result))


def _table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def report_html(result: PrepareResult) -> str:
    """The human-readable report (no scripts, no external resources besides the two sheets)."""
    settings = result.settings
    summary = result.as_dict()["summary"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Likeness dataset report</title>",
        ("<style>body{font:14px/1.45 system-ui,sans-serif;margin:24px;max-width:1300px}table{border-collapse:collapse;margin:8px 0 18px}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f2f2f2}"
        "img{max-width:100%}code{background:#f4f4f4;padding:0 3px}.warn{color:#a15c00}</style></head><body>"),
        "<h1>Likeness dataset report</h1>",
        (f"<p>Photos from <code>{html.escape(str(settings['photos']))}</code> into <code>{html.escape(str(settings['out']))}</code>: "
        f"<b>{summary['kept']}</b> kept, <b>{summary['rejected']}</b> rejected of {summary['photos']}. "
        f"{summary['repeats']} repeats, about {summary['steps_per_epoch']} steps per epoch at batch size {settings['batch_size']} "
        f"(repeats = max(1, ceil(target_steps × batch_size / images)) unless given).</p>"),
    ]
    if result.warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li class='warn'>{html.escape(w)}</li>" for w in result.warnings) + "</ul>")
    parts.append("<h2>Who</h2>" + _table(
        ["trigger", "found from", "reference photos", "kept images"],
        [[i["name"], i["refs"], i["n_references"] if i["n_references"] is not None else "–",
          sum(1 for k in result.kept if i["name"] in k.identities)] for i in result.identities],
    ))
    if result.coverage:
        parts.append("<h2>Coverage of identity subsets</h2><p>Images showing exactly these people (and none of the others), "
                     "and images showing at least them. Empty rows mean the LoRA never sees that combination.</p>")
        parts.append(_table(["people", "exactly", "at least"],
                            [[" + ".join(r.identities), r.exactly, r.at_least] for r in result.coverage]))
    parts.append("<h2>Kohya subsets</h2>" + _table(
        ["folder", "images", "num_repeats", "class_tokens", "keep_tokens", "is_reg"],
        [[s["folder"], s["images"], s["num_repeats"], s["class_tokens"], s["keep_tokens"], s["is_reg"]] for s in result.subsets],
    ))
    counts = result.counts()
    if counts:
        parts.append("<h2>Rejections by reason</h2>" + _table(
            ["reason", "photos", "meaning"], [[code, n, REJECTION_CODES.get(code, "")] for code, n in sorted(counts.items())]
        ))
    parts.append("<h2>Kept</h2><img src='contact_kept.jpg' alt='kept images'>")
    parts.append(_table(
        ["image", "source", "framing", "caption", "score", "similarity", "upscale", "padding"],
        [[k.output, k.source, k.framing, k.caption, f"{k.score:.3f}",
          ", ".join(f"{n} {v:.3f}" for n, v in k.similarity.items()) + (" (outlier?)" if k.outlier else ""),
          f"{k.upscale:.2f}×", f"{k.window.padding:.0%}"] for k in result.kept],
    ))
    parts.append("<h2>Rejected</h2><img src='contact_rejected.jpg' alt='rejected photos'>")
    parts.append(_table(["source", "reason", "details"], [[r.source, r.code, r.reason] for r in result.rejected]))
    from .config import THRESHOLD_NOTES

    thresholds = [[f"{group}.{k}", v, THRESHOLD_NOTES.get(k, "")] for group in ("quality", "selection") for k, v in settings[group].items()]
    parts.append("<h2>Thresholds</h2><p>Details in <code>lora_likeness.dataset.config</code>.</p>"
                 + _table(["setting", "value", "meaning"], thresholds))
    model = result.model
    parts.append(f"<p>Face model: {html.escape(str(model.get('pack')))} ({html.escape(str(model.get('embedding_dim')))}-d).</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)

