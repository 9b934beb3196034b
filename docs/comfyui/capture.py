"""Build the example workflows in a live ComfyUI and take the screenshots in this folder.

Both steps drive the real ComfyUI frontend in headless Chromium (Playwright), so the files are what
the frontend itself produces:

* ``build``: creates each graph in the page with the frontend's own LiteGraph (``createNode``,
  ``connect``, widget values) and writes ``workflows/<name>.json`` from ``app.graphToPrompt()``:
  the same UI-format document the *Save* menu writes and drag-and-drop loads.
* ``shoot``: loads ``workflows/<name>.json`` as a user would, optionally sets widget values for the
  machine it runs on (``--set LikenessFaceModel.pack=likeness_test``), queues it, waits for it to
  finish, and screenshots the page into ``docs/comfyui/<name>.png``, and a small one into
  ``workflows/<name>.jpg``, the thumbnail ComfyUI's template browser shows. ``--templates`` also
  screenshots the template browser showing the pack's workflows.

``--blank-photos`` keeps the test photos out of the screenshots (they may not be redistributed):
every image the page loads from ``/view`` passes through :func:`blank_photo_pixels`, which keeps the
opaque score badges and the face-box lines Likeness draws and turns everything else flat grey.
``--keep`` names images to leave alone (the plot, the random model's noise grid).

Needs a running ComfyUI with this pack (see tests/integration/README.md), Playwright
(``pip install playwright``) and a Chromium (``--chromium``; Debian: ``apt-get install
chromium-headless-shell``). Nothing here is imported by the pack or the tests.

    python docs/comfyui/capture.py --url http://127.0.0.1:8188 build
    python docs/comfyui/capture.py --url http://127.0.0.1:8188 shoot --templates \
        --set LikenessFaceModel.pack=likeness_test --set LikenessReferenceFaces.folder=/photos/me
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
SHOTS = Path(__file__).resolve().parent

SCORE_FOLDER_NOTE = """Score a folder of generated images (or any photos) against photos of the person.

1. Face Model: pick an insightface pack from ComfyUI/models/insightface/models/ (buffalo_l, antelopev2, ...). None installed? The node says where to put one.
2. Reference Faces: type the folder of real photos of the person (5-20 clear photos), or connect an IMAGE batch. Its preview shows each face with how well it matches the others; photos of someone else are flagged.
3. Score Images: type the folder of images to score in its 'folder' box: a path, or a folder name in ComfyUI/input/. Any sizes; each image keeps its file name in the report, and each sub-folder (exp_e10/, exp_e20/, ...) is a group of its own. One score per image (cosine similarity, higher = more alike; compare with the baseline in Reference Faces' summary); images without a face are marked 'no face' and left out of the statistics. Or connect an IMAGE batch instead of typing a folder.
4. Scored Grid: contact sheet of the scored images, plus the report (CSV, JSON, Markdown, plot) in ComfyUI/output/likeness/score_folder_NNNNN/."""

EPOCH_SWEEP_NOTE = """Which epoch and strength of your face LoRA looks most like you?

1. Load Checkpoint: the base model the LoRA was trained on (SD1.5 here).
2. LoRA Checkpoints: one training run from ComfyUI/models/loras/ (Kohya's name-000001 ... name-0000NN and the final name), optionally an epoch range.
3. Epoch Sweep: samples every checkpoint x strength x seed with ComfyUI's own sampler, applying each LoRA to the already loaded model (the checkpoint is loaded once). Put the trigger word in the prompt; strengths and seeds are comma-separated. include_baseline adds a 'no LoRA' row (the base model alone, once per seed): the floor.
4. Face Model + Reference Faces: the insightface pack and a folder of real photos of the person.
5. Score Images: one score per image; the labels group them by epoch and strength.
6. Scored Grid: epochs x strengths (seeds side by side) with every score and the row/column means, and the report (CSV, JSON, Markdown, plot) in ComfyUI/output/likeness/epoch_sweep_NNNNN/. Its recommend output (shown below it) names the pick: the cell with the highest mean identity, its 95% CI, whether it beats the runner-up beyond noise, the no-LoRA floor and the reference photos' ceiling, and warnings (memorisation, rising no-face rate); also written as recommendation.json."""

EPOCH_SWEEP_SDXL_NOTE = """Which epoch and strength of your SDXL face LoRA looks most like you?

The same sweep as epoch_sweep.json, set up for SDXL:
1. Load Checkpoint: the SDXL base model the LoRA was trained on (sd_xl_base_1.0 or a fine-tune of it).
2. LoRA Checkpoints: one SDXL training run from ComfyUI/models/loras/ (Train LoRA on an SDXL checkpoint, or sd-scripts' sdxl_train_network.py). An SD1.x LoRA on an SDXL model (or the reverse) stops before the first image and says which is which.
3. Epoch Sweep: 1024 x 1024, 25 steps, cfg 7 (SDXL's own size; 512 px images from SDXL are poor). Put the trigger word in the prompt. include_baseline adds the 'no LoRA' row: the floor.
4. Face Model + Reference Faces: the insightface pack and a folder of real photos of the person.
5. Score Images: one score per image; the labels group them by epoch and strength.
6. Scored Grid: epochs x strengths with every score and the row/column means, the report in ComfyUI/output/likeness/epoch_sweep_sdxl_NNNNN/, and its recommend output (shown below it): the cell to use, how sure that is, the no-LoRA floor and the reference photos' ceiling; also written as recommendation.json."""


def _epoch_sweep_graph(note: str, checkpoint: str, run: str, size: int, steps: int, prefix: str) -> dict:
    """Load Checkpoint + LoRA Checkpoints -> Epoch Sweep -> Score Images -> Scored Grid -> two Preview Any."""
    return {
        "nodes": [
            {"key": "note", "type": "Note", "pos": [20, 20], "size": [420, 600], "text": note},
            {"key": "ckpt", "type": "CheckpointLoaderSimple", "pos": [470, 20], "widgets": {"ckpt_name": checkpoint}},
            {"key": "runs", "type": "LikenessLoraCheckpoints", "pos": [470, 180],
             "widgets": {"run": run, "first_epoch": 0, "last_epoch": 0, "include_final": True}},
            {"key": "sweep", "type": "LikenessEpochSweep", "pos": [820, 20], "size": [340, 620],
             "widgets": {"positive": "photo of sks person, portrait, looking at the camera", "negative": "blurry, lowres",
                         "strengths": "0.6, 0.8, 1.0", "seeds": "1, 2", "steps": steps, "cfg": 7.0,
                         "sampler_name": "euler", "scheduler": "normal", "width": size, "height": size,
                         "include_baseline": True}},
            {"key": "face_model", "type": "LikenessFaceModel", "pos": [470, 380], "widgets": {"pack": "buffalo_l", "provider": "auto"}},
            {"key": "refs", "type": "LikenessReferenceFaces", "pos": [470, 560], "size": [330, 420],
             "widgets": {"aggregation": "max", "folder": "/path/to/photos/of/the/person"}},
            {"key": "score", "type": "LikenessScoreImages", "pos": [1190, 20], "widgets": {"face": "largest"}},
            {"key": "grid", "type": "LikenessScoredGrid", "pos": [1190, 220], "size": [520, 560],
             "widgets": {"filename_prefix": prefix}},
            {"key": "summary", "type": "PreviewAny", "pos": [1190, 810], "size": [520, 240]},
            {"key": "recommend", "type": "PreviewAny", "pos": [1190, 1080], "size": [520, 160]},
        ],
        "links": [
            ("ckpt", 0, "sweep", "model"),
            ("ckpt", 1, "sweep", "clip"),
            ("ckpt", 2, "sweep", "vae"),
            ("runs", 0, "sweep", "checkpoints"),
            ("face_model", 0, "refs", "face_model"),
            ("sweep", 0, "score", "images"),
            ("refs", 0, "score", "references"),
            ("sweep", 1, "score", "labels"),
            ("sweep", 0, "grid", "images"),
            ("score", 3, "grid", "score_run"),
            ("sweep", 1, "grid", "labels"),
            ("grid", 1, "summary", "source"),
            ("grid", 2, "recommend", "source"),
        ],
    }


# Each graph: nodes (key, type, position, widget values, size) and links (from key, output index,
# to key, input name). Positions leave room for the previews the nodes show after a run.
GRAPHS = {
    "score_folder": {
        "nodes": [
            {"key": "note", "type": "Note", "pos": [20, 20], "size": [420, 560], "text": SCORE_FOLDER_NOTE},
            {"key": "face_model", "type": "LikenessFaceModel", "pos": [470, 20], "widgets": {"pack": "buffalo_l", "provider": "auto"}},
            {"key": "refs", "type": "LikenessReferenceFaces", "pos": [470, 200], "size": [330, 420],
             "widgets": {"aggregation": "max", "folder": "/path/to/photos/of/the/person"}},
            {"key": "score", "type": "LikenessScoreImages", "pos": [840, 20], "size": [300, 160],
             "widgets": {"face": "largest", "folder": "generated"}},
            {"key": "preview", "type": "PreviewImage", "pos": [840, 250], "size": [330, 380]},
            {"key": "grid", "type": "LikenessScoredGrid", "pos": [1200, 20], "size": [460, 620],
             "widgets": {"filename_prefix": "likeness/score_folder"}},
            {"key": "summary", "type": "PreviewAny", "pos": [1200, 670], "size": [460, 260]},
        ],
        "links": [
            ("face_model", 0, "refs", "face_model"),
            ("refs", 0, "score", "references"),
            ("score", 2, "preview", "images"),
            ("score", 3, "grid", "score_run"),
            ("grid", 1, "summary", "source"),
        ],
    },
    "epoch_sweep": _epoch_sweep_graph(EPOCH_SWEEP_NOTE, "v1-5-pruned-emaonly.safetensors", "my_face_lora", 512, 20,
                                      "likeness/epoch_sweep"),
    "epoch_sweep_sdxl": _epoch_sweep_graph(EPOCH_SWEEP_SDXL_NOTE, "sd_xl_base_1.0.safetensors", "my_sdxl_face_lora", 1024, 25,
                                           "likeness/epoch_sweep_sdxl"),
}

BUILD_JS = """async (spec) => {
  const app = window.app, LG = window.LiteGraph;
  app.graph.clear();
  const made = {};
  for (const n of spec.nodes) {
    const node = LG.createNode(n.type);
    if (!node) throw new Error("unknown node type " + n.type);
    node.pos = n.pos;
    app.graph.add(node);
    for (const [name, value] of Object.entries(n.widgets || {})) {
      const widget = (node.widgets || []).find(w => w.name === name);
      if (!widget) throw new Error(n.type + " has no widget " + name);
      widget.value = value;
    }
    if (n.text !== undefined) node.widgets[0].value = n.text;
    if (n.size) node.size = n.size;
    made[n.key] = node;
  }
  for (const [from, slot, to, input] of spec.links) {
    const target = made[to], index = target.findInputSlot(input);
    if (index < 0) throw new Error(target.type + " has no input " + input);
    made[from].connect(slot, target, index);
  }
  app.graph.setDirtyCanvas(true, true);
  const { workflow } = await app.graphToPrompt();
  return JSON.stringify(workflow, null, 2);
}"""

LOAD_JS = """async ([workflow, settings, name]) => {
  const app = window.app;
  await app.loadGraphData(workflow, true, true, name);
  for (const [type, name, value] of settings) {
    const nodes = app.graph.nodes.filter(n => n.type === type);
    if (!nodes.length) throw new Error("no " + type + " node");
    for (const node of nodes) {
      const widget = node.widgets.find(w => w.name === name);
      if (!widget) throw new Error(type + " has no widget " + name);
      widget.value = value;
    }
  }
  app.graph.setDirtyCanvas(true, true);
}"""

QUEUE_BUSY_JS = """async () => {
  const q = await (await fetch('/queue')).json();
  return q.queue_running.length + q.queue_pending.length > 0;
}"""

FIT_JS = """() => {
  const app = window.app, nodes = app.graph.nodes;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const canvas = app.canvas, el = canvas.canvas;
  const width = el.width / (window.devicePixelRatio || 1), height = el.height / (window.devicePixelRatio || 1);
  const scale = Math.min((width - 120) / (x1 - x0), (height - 120) / (y1 - y0), 1.0);
  canvas.ds.scale = scale;
  canvas.ds.offset = [(width / scale - (x1 - x0)) / 2 - x0, (height / scale - (y1 - y0)) / 2 - y0 + 10];
  canvas.setDirty(true, true);
}"""


def _black_rectangles(black) -> list[tuple[int, int, int, int]]:
    """Opaque black rectangles (score badges, contact-sheet text strips): ``(top, bottom, left, right)``,
    found by a top row and a bottom row with the same black run and black left/right columns between."""
    import numpy as np

    height, _ = black.shape
    runs_by_row = []
    for y in range(height):
        row = np.concatenate([[False], black[y], [False]])
        edges = np.flatnonzero(row[1:] != row[:-1])
        runs_by_row.append({(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]) if b - a >= 12})
    found = []
    for top in range(height):
        for x0, x1 in runs_by_row[top]:
            bottom = top
            while bottom + 1 < height and black[bottom + 1, x0] and black[bottom + 1, x1 - 1]:
                bottom += 1
            while bottom > top and (x0, x1) not in runs_by_row[bottom]:
                bottom -= 1
            if bottom - top >= 8 and not any(t <= top and b >= bottom and l <= x0 and r >= x1 for t, b, l, r in found):
                found.append((top, bottom + 1, x0, x1))
    return found


def _long_runs(mask, length: int):
    """Pixels of ``mask`` that belong to a horizontal run of at least ``length``."""
    import numpy as np

    out = np.zeros(mask.shape, bool)
    for y in range(mask.shape[0]):
        row = np.concatenate([[False], mask[y], [False]])
        edges = np.flatnonzero(row[1:] != row[:-1])
        for a, b in zip(edges[::2], edges[1::2]):
            if b - a >= length:
                out[y, a:b] = True
    return out


def blank_photo_pixels(data: bytes) -> bytes:
    """Flat grey everywhere except what Likeness drew: its opaque black badges (with the score text)
    and lines of a badge's text colour (the face box). The photo's own pixels do not survive."""
    import io

    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    rgb = np.asarray(image)
    black = (rgb == 0).all(axis=-1)
    keep = np.zeros(black.shape, bool)
    colours = set()
    for top, bottom, left, right in _black_rectangles(black):
        keep[top:bottom, left:right] = True
        inside = rgb[top:bottom, left:right].reshape(-1, 3)
        bright = inside[inside.max(axis=1) > 60]
        if len(bright):
            values, counts = np.unique(bright, axis=0, return_counts=True)
            colours.add(tuple(int(v) for v in values[counts.argmax()]))
    for colour in colours:  # the face box: straight runs of exactly the badge's colour
        same = (rgb == np.array(colour, np.uint8)).all(axis=-1)
        keep |= _long_runs(same, 6) | _long_runs(same.T, 6).T
    out = np.where(keep[..., None], rgb, np.uint8(96))
    buffer = io.BytesIO()
    Image.fromarray(out.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


async def _blank_route(route, keep: list[str]) -> None:
    import fnmatch
    from urllib.parse import parse_qs, urlparse

    query = parse_qs(urlparse(route.request.url).query)
    name = "/".join(v for v in (query.get("subfolder", [""])[0], query.get("filename", [""])[0]) if v)
    response = await route.fetch()
    if any(fnmatch.fnmatch(name, pattern) for pattern in keep):
        await route.fulfill(response=response)
        return
    await route.fulfill(response=response, body=blank_photo_pixels(await response.body()), content_type="image/png")


async def _open(playwright, url: str, chromium: str, size: tuple[int, int]):
    browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
    page = await browser.new_page(viewport={"width": size[0], "height": size[1]})
    await page.goto(url, wait_until="networkidle", timeout=120_000)
    await page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=60_000)
    await page.wait_for_timeout(1500)
    await page.keyboard.press("Escape")  # the first-run template dialog
    await page.evaluate("""async () => { try { await window.app.extensionManager.setting.set('Comfy.Minimap.Visible', false); }
                           catch (e) { /* older frontends have no minimap */ } }""")
    await page.wait_for_timeout(500)
    return browser, page


async def build(args) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser, page = await _open(p, args.url, args.chromium, (1600, 1000))
        for name in args.names or list(GRAPHS):
            spec = GRAPHS[name]
            text = await page.evaluate(BUILD_JS, spec)
            workflow = json.loads(text)
            workflow.pop("id", None)  # a fresh id is given on load; keep the file stable
            (WORKFLOWS / f"{name}.json").write_text(json.dumps(workflow, indent=2) + "\n", encoding="utf-8")
            print(f"wrote {WORKFLOWS / f'{name}.json'} ({len(workflow['nodes'])} nodes, {len(workflow['links'])} links)")
        await browser.close()


def _settings(pairs: list[str]) -> list[tuple[str, str, object]]:
    out = []
    for pair in pairs:
        target, _, value = pair.partition("=")
        node_type, _, widget = target.partition(".")
        if not widget:
            raise SystemExit(f"--set wants TYPE.WIDGET=VALUE, got {pair!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.append((node_type, widget, parsed))
    return out


async def shoot(args) -> None:
    from playwright.async_api import async_playwright

    settings = _settings(args.set)
    async with async_playwright() as p:
        browser, page = await _open(p, args.url, args.chromium, (args.width, args.height))
        if args.blank_photos:
            await page.route("**/view?**", lambda route: _blank_route(route, args.keep))
        names = args.names or list(GRAPHS)
        for name in names:
            workflow = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
            types = {n["type"] for n in workflow["nodes"]}
            await page.evaluate(LOAD_JS, [workflow, [s for s in settings if s[0] in types], f"{name}.json"])
            if args.run:
                await page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
                await page.wait_for_timeout(2000)
                deadline = asyncio.get_running_loop().time() + args.timeout
                while await page.evaluate(QUEUE_BUSY_JS):
                    if asyncio.get_running_loop().time() > deadline:
                        raise SystemExit(f"{name}: still running after {args.timeout}s")
                    await asyncio.sleep(2)
                await page.wait_for_timeout(3000)  # previews load
            await page.evaluate(FIT_JS)
            await page.wait_for_timeout(800)
            out = SHOTS / f"{name}.png"
            await page.screenshot(path=str(out))
            print(f"wrote {out}")
            # The template browser's thumbnail: <name>.jpg beside the workflow (what the frontend asks for).
            await page.set_viewport_size({"width": 720, "height": 600})  # the browser's cards are near square
            await page.wait_for_timeout(500)
            await page.evaluate(FIT_JS)
            await page.wait_for_timeout(800)
            thumb = WORKFLOWS / f"{name}.jpg"
            await page.screenshot(path=str(thumb), type="jpeg", quality=70)
            await page.set_viewport_size({"width": args.width, "height": args.height})
            print(f"wrote {thumb}")
        if args.templates:
            await page.keyboard.press("Escape")
            await page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
            await page.wait_for_timeout(2500)
            entry = page.get_by_text(args.pack_name, exact=False).first
            if await entry.count():
                await entry.click()
                await page.wait_for_timeout(2500)
            out = SHOTS / "template_browser.png"
            await page.screenshot(path=str(out))
            print(f"wrote {out}")
        await browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8188")
    parser.add_argument("--chromium", default="/usr/bin/chromium-headless-shell")
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("build", help="write workflows/*.json from the graphs defined here")
    make.add_argument("names", nargs="*", help=f"workflows (default: {', '.join(GRAPHS)})")
    shot = sub.add_parser("shoot", help="screenshot each workflow as ComfyUI renders it")
    shot.add_argument("names", nargs="*", help=f"workflows (default: {', '.join(GRAPHS)})")
    shot.add_argument("--set", action="append", default=[], metavar="TYPE.WIDGET=VALUE")
    shot.add_argument("--no-run", dest="run", action="store_false", help="screenshot without queueing")
    shot.add_argument("--timeout", type=int, default=900, help="seconds to wait for a run")
    shot.add_argument("--width", type=int, default=1800)
    shot.add_argument("--height", type=int, default=1100)
    shot.add_argument("--templates", action="store_true", help="also screenshot the template browser")
    shot.add_argument("--blank-photos", action="store_true", help="grey out photo pixels in every image the page shows")
    shot.add_argument("--keep", action="append", default=["*scores.png"], metavar="GLOB",
                      help="subfolder/filename of images not to blank (default: the plots)")
    shot.add_argument("--pack-name", default="ComfyUI-Likeness", help="the pack's folder name in custom_nodes")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in GRAPHS]
    if unknown:
        parser.error(f"no workflow named {', '.join(unknown)} (known: {', '.join(GRAPHS)})")
    asyncio.run(build(args) if args.command == "build" else shoot(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
