"""The sweep configuration: which checkpoints, strengths, seeds and prompts, and how images are generated.

Every field is also a ``likeness sweep`` flag (``--cfg 7``) and a TOML key of ``--config FILE``.
Sizes are in pixels; ``cfg`` is the classifier-free guidance scale; strengths are LoRA multipliers
(1.0 = as trained). Defaults follow the seed experiments: two seeds, strengths 0.6 / 0.8 / 1.0,
DPM++ 2M Karras; size, steps and CFG left unset take the base model family's defaults (SD1.x: 25 steps
at 512×768, CFG 7; SDXL: 25 steps at 1024×1024, CFG 7).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# name -> (diffusers scheduler class, extra config); names follow ComfyUI's sampler/scheduler pairs.
SAMPLERS: dict[str, tuple[str, dict]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "dpmpp_sde_karras": ("DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
    "ddim": ("DDIMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
}


class SweepConfigError(ValueError):
    """A sweep setting the user must fix; the message names it and what is allowed."""


@dataclass
class SweepConfig:
    """Everything one sweep needs."""

    base: Path | None = None
    """Base model (SD1.x or SDXL): a diffusers folder or a single-file ``.safetensors`` checkpoint."""
    family: str = "auto"
    """Model family of ``base``: ``auto`` (detected), ``sd1`` or ``sdxl``."""
    loras: Path | None = None
    """A Kohya run folder (``name-000010.safetensors`` …, ``name.safetensors``), a folder of diffusers/PEFT run
    folders (``exp_e10/pytorch_lora_weights.safetensors`` …), or one LoRA file."""
    refs: Path | None = None
    """Real photos of the person (a folder): the references every image is scored against."""
    people: Path | None = None
    """Several people (a family LoRA) instead of ``refs``: a ``likeness prepare --identity`` dataset (its people,
    their reference photos and the subsets it covers) or a folder with one sub-folder of photos per person. Every
    person is scored in every image; without ``prompts``, one prompt per covered subset is generated."""
    out: Path | None = None
    """Output folder: ``images/``, ``report.html``, ``recommendation.json``, ``grid.jpg`` …"""
    prompts: list[str] = field(default_factory=list)
    """One or more prompts; each is generated with every seed in every cell."""
    negative: str = ""
    seeds: list[int] = field(default_factory=lambda: [1236, 1237])
    strengths: list[float] = field(default_factory=lambda: [0.6, 0.8, 1.0])
    steps: int | None = None
    """Sampling steps; default: the family's."""
    cfg: float | None = None
    """Classifier-free guidance scale; default: the family's."""
    width: int | None = None
    """Image width in pixels; default: the family's (512 SD1.x, 1024 SDXL)."""
    height: int | None = None
    """Image height in pixels; default: the family's (768 SD1.x, 1024 SDXL)."""
    sampler: str = "dpmpp_2m_karras"
    """One of :data:`SAMPLERS`."""
    clip_skip: int = 1
    run: str | None = None
    """Which training run in ``loras`` when it holds several."""
    baseline: bool = True
    """Also generate without any LoRA: the floor every checkpoint should beat."""
    pack: str | None = None
    """Face-model pack (name or folder); default: found like ``likeness score`` finds it."""
    providers: str = "auto"
    tokenizer: Path | None = None
    """CLIP tokenizer folder for a single-file base (default: found offline, see ``likeness train``)."""
    tokenizer_2: Path | None = None
    """SDXL's second tokenizer folder (default: the base folder's, else ``tokenizer``'s files with SDXL's pad token)."""
    base_config: Path | None = None
    clip: Path | None = None
    """A local CLIP model folder for prompt adherence; default: looked for in the offline Hugging Face cache."""
    adherence: bool = True
    """Measure prompt adherence when a CLIP model is found (``--no-adherence`` turns it off)."""
    device: str = "auto"
    precision: str = "auto"
    """``auto`` (fp16 on CUDA, float32 on CPU), ``fp16``, ``bf16`` or ``float``."""
    batch_size: int = 4
    """Images generated at once (the seeds of one cell and prompt share a batch)."""
    max_no_face: float = 0.5
    """Cells whose no-face rate is above this cannot be recommended."""

    def replace(self, **changes: Any) -> SweepConfig:
        return dataclasses.replace(self, **changes)

    def for_family(self, family) -> SweepConfig:
        """A copy with the size, steps and CFG left unset taken from ``family``'s defaults."""
        defaults = family.defaults
        return dataclasses.replace(self, family=family.name, width=self.width or defaults.width, height=self.height or defaults.height,
                                   steps=self.steps or defaults.steps, cfg=defaults.cfg if self.cfg is None else self.cfg)

    def validate(self) -> SweepConfig:
        """Check every setting; paths become :class:`~pathlib.Path`. Raises :class:`SweepConfigError`."""
        for name in ("base", "loras", "out"):
            if getattr(self, name) in (None, ""):
                raise SweepConfigError(f"--{name} is required")
        if self.refs in (None, "") and self.people in (None, ""):
            raise SweepConfigError("--refs is required (or --people for a LoRA of several people)")
        for name in ("base", "loras", "refs", "people", "out", "tokenizer", "tokenizer_2", "base_config", "clip"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        for name in ("base", "loras", "refs", "people"):
            if getattr(self, name) is not None and not getattr(self, name).exists():
                raise SweepConfigError(f"--{name} {getattr(self, name)} does not exist")
        if self.people is not None and not self.prompts:
            from ..people_sweep import read_dataset_people, subset_prompts

            dataset = read_dataset_people(self.people)
            if dataset is not None:
                self.prompts = subset_prompts(dataset)
        from ..outputs import OutputError, check_output_folder

        try:
            check_output_folder(self.out)
        except OutputError as exc:
            raise SweepConfigError(str(exc)) from None
        self.prompts = [p.strip() for p in self.prompts if p and p.strip()]
        if not self.prompts:
            raise SweepConfigError("--prompt is required: the text every image is generated from (e.g. 'photo of ohwx man'); "
                                   "with --people naming a `likeness prepare --identity` dataset, one prompt per covered group is made")
        if not self.seeds:
            raise SweepConfigError("--seeds needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise SweepConfigError(f"--seeds repeats a seed: {self.seeds}")
        if not self.strengths:
            raise SweepConfigError("--strengths needs at least one strength")
        if any(not (-4.0 <= s <= 4.0) for s in self.strengths):
            raise SweepConfigError(f"--strengths must lie between -4 and 4; got {self.strengths}")
        self.strengths = sorted(dict.fromkeys(float(s) for s in self.strengths))
        if self.sampler not in SAMPLERS:
            raise SweepConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}; got {self.sampler!r}")
        if self.family not in ("auto", "sd1", "sdxl"):
            raise SweepConfigError(f"--family must be auto, sd1 or sdxl; got {self.family!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (value < 64 or value % 8):
                raise SweepConfigError(f"--{name} must be a multiple of 8 and at least 64; got {value}")
        if self.steps is not None and self.steps < 1:
            raise SweepConfigError(f"--steps must be at least 1; got {self.steps}")
        if self.clip_skip < 1:
            raise SweepConfigError(f"--clip-skip must be at least 1; got {self.clip_skip}")
        if self.batch_size < 1:
            raise SweepConfigError(f"--batch-size must be at least 1; got {self.batch_size}")
        if self.precision not in ("auto", "fp16", "bf16", "float"):
            raise SweepConfigError(f"--precision must be auto, fp16, bf16 or float; got {self.precision!r}")
        if not 0.0 <= self.max_no_face <= 1.0:
            raise SweepConfigError(f"--max-no-face is a rate between 0 and 1; got {self.max_no_face}")
        return self

    def generation(self) -> dict:
        """The settings every image of the sweep shares (recorded in each PNG and in the report)."""
        return {"negative": self.negative, "steps": self.steps, "cfg": self.cfg, "width": self.width, "height": self.height,
                "sampler": self.sampler, "clip_skip": self.clip_skip}

    def as_dict(self) -> dict:
        return {f.name: (str(v) if isinstance(v, Path) else v) for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}


def parse_seeds(text: str) -> list[int]:
    """``"1236,1237"`` or ``"1236-1239"`` (inclusive) or a mix → seeds, in the order given."""
    seeds: list[int] = []
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)-(\d+)", part)
        try:
            if match:
                first, last = int(match.group(1)), int(match.group(2))
                if last < first or last - first > 10000:
                    raise ValueError
                seeds.extend(range(first, last + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise SweepConfigError(f"--seeds: cannot read {part!r}; write seeds like 1236,1237 or 1236-1239") from None
    return seeds


def parse_floats(text: str, name: str) -> list[float]:
    """``"0.6,0.8,1.0"`` → floats."""
    try:
        return [float(p) for p in re.split(r"[,\s]+", text.strip()) if p]
    except ValueError:
        raise SweepConfigError(f"--{name}: cannot read {text!r}; write numbers like 0.6,0.8,1.0") from None


def field_names() -> Sequence[str]:
    return [f.name for f in dataclasses.fields(SweepConfig)]
