"""A1111 with an SDXL checkpoint loaded: the Likeness X/Y/Z axes and scores over SDXL LoRAs.

Needs what ``test_a1111_host.py`` needs (``A1111_DIR`` with ``repositories/generative-models`` filled,
``A1111_PYTHON``) and the random full-size SDXL 1.0 base: ``$LIKENESS_SDXL_CKPT``, else
``~/.cache/likeness-tests/sdxl_random_fp16.safetensors`` (made once with ``../shared/tools/make_random_sdxl.py``,
9.4 GB of memory). The server holds the whole SDXL in memory, so the module runs under
``$LIKENESS_BIGMEM_LOCK`` (an exclusive ``flock``; nothing is locked when it is unset): one such job at a time.

The server runs SDXL's weights in fp16 with A1111's ``--precision half`` (everything fp16, its sgm ``GroupNorm32``
swapped for ``torch.nn.GroupNorm`` so nothing is cast to fp32). ``--upcast-sampling`` is A1111's GPU way and does
not run on a CPU (the fp32 input of ``GroupNorm32`` meets fp16 weights: "mixed dtype (CPU)"), and the fp32 copy
(``--no-half``: 14 GB of weights alone, plus the 6.9 GB state dict while loading) does not fit beside other work
in 24 GB. Measured here with fp16: the server's peak RSS while loading was 14.5 GB (VmHWM).
``lora_functional`` (A1111's setting: the LoRA is added in each layer's forward rather than merged into a
backed-up copy of each weight) keeps A1111's Lora extension from copying the 5 GB of weights our full-size
LoRA touches; the key lookup (``load_network``) is the same either way, and every cell checks that A1111
matched every module of the file.

The LoRA files are one Kohya run (``xltest-000001``, ``-000002``, final ``xltest`` with ``ss_epoch`` 3) with
every module the core names on a full-size SDXL (986: UNet 722, CLIP-L 72, OpenCLIP-bigG 192; the keys and
shapes from the family's configs on the meta device, as ``test_lora_compat.py`` builds them) and small random
weights. As in the SD1 test, an injector extension replaces each generated image by a real photo chosen
by the LoRA A1111 loaded (random weights draw no faces) and logs what A1111 loaded.
"""

from __future__ import annotations

import base64
import io
import json
import re
import stat
from pathlib import Path

import pytest
from test_a1111_host import (  # noqa: F401  (a1111_dir: the shared module fixture)
    _a1111_python,
    _cell_area,
    _cell_faces,
    _close,
    _core_scores,
    _likeness,
    _likeness_args,
    _txt2img,
    _umask,
    a1111_dir,
    running_a1111,
)
from full_size_models import bigmem, full_size_targets, sdxl_checkpoint, write_random_lora

pytestmark = pytest.mark.integration

RUN = "xltest"
STEMS = [f"{RUN}-000001", f"{RUN}-000002", RUN]
SDXL_MODULES = 722 + 72 + 192


@pytest.fixture(scope="module")
def sdxl_server(a1111_dir: Path, tmp_path_factory):
    assert (a1111_dir / "repositories" / "generative-models" / "sgm").is_dir(), (
        f"{a1111_dir}/repositories/generative-models is not filled; see tests/integration/README.md")
    root = tmp_path_factory.mktemp("a1111_sdxl")
    targets = full_size_targets("sdxl")
    assert len(targets) == SDXL_MODULES

    def write_loras(folder: Path) -> None:
        for epoch, stem in enumerate(STEMS, start=1):
            write_random_lora(folder / f"{stem}.safetensors", targets, seed=epoch, metadata={
                "ss_epoch": str(epoch), "ss_output_name": RUN, "ss_base_model_version": "sdxl_base_v1-0",
                "ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "4"})

    faces = _cell_faces(root / "photos", STEMS)
    checkpoint = sdxl_checkpoint(_a1111_python())
    with bigmem(), running_a1111(a1111_dir, root, checkpoint, write_loras, faces, args=["--precision", "half"],
                                  config={"lora_functional": True}, ready_s=900) as server:
        yield server


def test_sdxl_xyz_over_the_likeness_axes_scores_and_recommends(sdxl_server) -> None:
    """Epoch ("None", e1, e2) x strength (0.5, 1) on the SDXL model: A1111's own Lora extension loaded each
    cell's SDXL LoRA with all 986 modules matched, at the axis' strength; every cell is scored; the reports
    lie beside the saved grid (0644 as A1111's); the recommendation names e2 @ 0.5 over the no-LoRA floor."""
    server = sdxl_server
    info = server.call("GET", "/sdapi/v1/script-info")
    choices = next(s for s in info if s["name"] == "x/y/z plot" and not s["is_img2img"])["args"][0]["choices"]
    epoch_axis, strength_axis = choices.index("Likeness: LoRA epoch"), choices.index("Likeness: LoRA strength")
    models = server.call("GET", "/sdapi/v1/sd-models")
    assert [m["filename"] for m in models] and Path(models[0]["filename"]).name == sdxl_checkpoint().name, models
    server.test_log.write_text("", encoding="utf-8")
    script_args = [epoch_axis, "", ["None", STEMS[0], STEMS[1]], strength_axis, "0.5, 1", [], 0, "", [], True, True, False,
                   False, False, False, False, 0, False]
    result = _txt2img(server, prompt=f"photo of a person, <lora:{STEMS[2]}:1>", script_name="x/y/z plot", script_args=script_args,
                      alwayson_scripts=_likeness_args(server), save_images=True, steps=1, cfg_scale=3,
                      timeout=3600)  # six fp16 SDXL cells on a CPU: 13 min here when idle, over 15 min under load
    texts = json.loads(result["info"])["infotexts"]

    cells = [json.loads(line) for line in server.test_log.read_text(encoding="utf-8").splitlines()]
    assert len(cells) == 6 and all(c["is_sdxl"] for c in cells), cells
    loaded = sorted((c["loaded"][0][0], c["loaded"][0][2]) for c in cells if c["loaded"])
    assert loaded == sorted((stem, s) for stem in STEMS[:2] for s in (0.5, 1.0)), cells
    assert sum(c["loaded"] == [] and "<lora:" not in c["prompt"] for c in cells) == 2, cells  # "None": the base model alone
    # A1111's Lora extension matched every module of our SDXL file on its SDXL model (a key it cannot place is dropped).
    assert {n for c in cells for n in c["modules"].values()} == {SDXL_MODULES}, cells

    floor, e1, e2 = _core_scores([server.faces[""], server.faces[STEMS[0]], server.faces[STEMS[1]]], server.refs)
    assert floor is not None and e2 > max(floor, e1) + 0.2, (floor, e1, e2)
    for text in texts[1:]:
        tag = re.search(r"<lora:([^:>]+):", text)
        expected = {STEMS[0]: e1, STEMS[1]: e2}[tag.group(1)] if tag else floor
        assert _close(_likeness(text), expected), text
    grids = sorted((server.data / "outputs" / "txt2img-grids").rglob("xyz_grid-*.png"))
    json_path = grids[-1].with_name(grids[-1].stem + "-likeness_scores.json")
    csv_path = grids[-1].with_name(grids[-1].stem + "-likeness_scores.csv")
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (grids[-1], csv_path, json_path)}
    assert set(modes.values()) == {0o666 & ~_umask()}, {name: oct(mode) for name, mode in modes.items()}
    report = json.loads(json_path.read_text(encoding="utf-8"))
    assert report["failed_cells"] == []
    groups = {g["label"]: g for g in report["groups"]}
    assert set(groups) == {f"{e} | strength {s}" for e in ("no LoRA", "xltest e1", "xltest e2") for s in ("0.5", "1")}, groups
    advice = report["recommendation"]
    assert advice["best"] == "xltest e2 @ 0.5", advice["headline"]
    assert _close(advice["floor"], floor) and advice["ceiling"] > 0.4
    assert f"Likeness recommendation: {advice['best']}" in texts[0], texts[0]
    assert f"[Likeness] {advice['headline']}" in server.tail(20000)

    import numpy as np
    from PIL import Image

    lone = [Image.open(io.BytesIO(base64.b64decode(image))) for image in result["images"][1:]]
    with Image.open(grids[-1]) as saved:
        assert _close(_likeness(saved.info["parameters"]), (2 * floor + 2 * e1 + 2 * e2) / 6), saved.info["parameters"]
        grid = saved.convert("RGB")
    _, top = _cell_area(grid, lone, columns=3, rows=2)
    band = np.asarray(grid.convert("L"))[top + 2 * max(image.height for image in lone):]
    assert band.size and band.min() < 60 and band.max() > 200  # the recommendation band under the cells
