"""Runtime requirements of Likeness, the facts of the running environment, and a plan to fit them.

Standard library only: ``install.py`` loads this file by path (as ``lora_likeness_dependencies``)
before anything is installed, and ``likeness doctor`` imports it as ``lora_likeness.dependencies``.
Nothing here imports a heavy package: facts come from distribution metadata
(``importlib.metadata``) and, for torch, from the text of ``torch/version.py``.

The rules, in short:

* Likeness needs :data:`REQUIREMENTS` (pyproject's ``dependencies``) plus one onnxruntime variant.
* All onnxruntime variants install the same ``onnxruntime`` import package; two of them installed
  overwrite each other's files, and the GPU build silently ends up CPU-only. A clash is repaired by
  uninstalling every variant and installing the one wanted.
* The host (ComfyUI, A1111/Forge) owns torch, numpy, Pillow, protobuf, transformers and OpenCV:
  their installed versions are handed to pip as constraints, so resolving our requirements can
  never upgrade or downgrade them. torch and torchvision are never installed nor uninstalled.
* What already fits is left alone (an insightface 0.7.3 that ReActor installed stays).
* What cannot fit the host's pins is reported, never forced.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

# --- what Likeness needs (keep in step with pyproject.toml; tests/test_install.py checks) --------

#: pyproject's ``requires-python``.
REQUIRES_PYTHON = ">=3.10,<3.13"

#: This project's distribution name (what ``pip install -e .`` registers).
DISTRIBUTION = "lora-likeness"

#: pyproject's ``dependencies``. onnxruntime is not listed: see :func:`want_onnxruntime`. Lower bounds
#: are what ``.ci/oldest_pins.sh`` runs the core tests on; upper bounds stop below the next major.
REQUIREMENTS: tuple[str, ...] = (
    "numpy>=1.26,<3",
    "Pillow>=9.5,<14",
    "insightface>=0.7.3,<3",
    "matplotlib>=3.7,<4",
    "rich>=13,<16",
    "scipy>=1.11,<2",
)

#: pyproject's ``train`` extra: the training stack in the ranges the tests run on. Lowest versions:
#: ``.ci/oldest_training.sh``; highest: what pip resolves today. diffusers stops below its next
#: minor (it removes deprecated APIs in minor releases), the others below their next major.
TRAIN_REQUIREMENTS: tuple[str, ...] = (
    "diffusers>=0.28,<0.43",
    "transformers>=4.35.2,<6",
    "peft>=0.13,<1",
    "safetensors>=0.4,<1",
    "tomli>=1.1,<3; python_version < '3.11'",
)

#: pyproject's ``test`` extra: the test tools plus the whole ``train`` extra.
TEST_REQUIREMENTS: tuple[str, ...] = (
    "pytest>=7.4,<10",
    "jsonschema>=4.17,<5",
    "safetensors>=0.4,<1",
    "pathspec>=0.11,<2",
    f"{DISTRIBUTION}[train]",
)

#: pyproject's ``optional-dependencies`` that :func:`extra_findings` checks.
EXTRAS: dict[str, tuple[str, ...]] = {"train": TRAIN_REQUIREMENTS, "test": TEST_REQUIREMENTS}

#: The packages whose failure to import means "the training stack is broken" (torch is the host's).
TRAINING_STACK: tuple[str, ...] = ("diffusers", "transformers", "peft")

#: pyproject's ``gpu`` extra: the floor for a freshly installed onnxruntime-gpu.
GPU_REQUIREMENT = "onnxruntime-gpu>=1.17"

#: From 1.19 on, onnxruntime-gpu on PyPI is built for CUDA 12; torch built for CUDA 11 needs < 1.19.
GPU_REQUIREMENT_CUDA11 = "onnxruntime-gpu>=1.17,<1.19"

#: Every distribution that installs the ``onnxruntime`` import package.
ONNXRUNTIME_VARIANTS: tuple[str, ...] = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-silicon",
    "onnxruntime-rocm",
)
ONNXRUNTIME_CPU = "onnxruntime"
ONNXRUNTIME_GPU = "onnxruntime-gpu"
ONNXRUNTIME_DIRECTML = "onnxruntime-directml"

#: Every distribution that installs the ``cv2`` import package.
CV2_DISTRIBUTIONS: tuple[str, ...] = (
    "opencv-python",
    "opencv-python-headless",
    "opencv-contrib-python",
    "opencv-contrib-python-headless",
)

#: Packages the host owns: when installed, their current version becomes a pip constraint.
HOST_PINNED: tuple[str, ...] = (
    "torch",
    "torchvision",
    "numpy",
    "Pillow",
    "protobuf",
    "transformers",
    *CV2_DISTRIBUTIONS,
)

#: Never installed, upgraded or uninstalled by Likeness, whatever pip proposes.
NEVER_TOUCH: tuple[str, ...] = ("torch", "torchvision", "torchaudio")

#: opencv-python 4.12 and later need numpy 2; a host still on numpy 1.x must stay at or below this.
OPENCV_MAX_FOR_NUMPY1 = "4.11.0.86"

#: What insightface 1.x / 2.x declare besides ``onnxruntime`` and ``opencv-python`` (which we
#: replace by the wanted onnxruntime variant and the host's cv2). Used only when pip cannot tell us
#: (``pip install --dry-run --report`` needs pip 22.2). insightface 0.7.3 additionally declared
#: scikit-learn, easydict, albumentations, prettytable, matplotlib, Pillow and cython.
INSIGHTFACE_FALLBACK_REQUIREMENTS: tuple[str, ...] = (
    "numpy",
    "onnx",
    "tqdm",
    "requests",
    "scipy",
    "scikit-image",
)

INSIGHTFACE = "insightface"


# --- names, versions, specifiers (a small PEP 440 subset; `packaging` may not be installed) ------

def canonical_name(name: str) -> str:
    """PEP 503 normalised distribution name: ``Pillow`` -> ``pillow``, ``onnxruntime_gpu`` ->
    ``onnxruntime-gpu``."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


_VERSION_RE = re.compile(
    r"""^\s*v?
    (?:(?P<epoch>\d+)!)?
    (?P<release>\d+(?:\.\d+)*)
    (?:[-_.]?(?P<pre_l>a|b|c|rc|alpha|beta|pre|preview)[-_.]?(?P<pre_n>\d*))?
    (?:-(?P<post_n1>\d+)|[-_.]?(?P<post_l>post|rev|r)[-_.]?(?P<post_n2>\d*))?
    (?:[-_.]?(?P<dev_l>dev)[-_.]?(?P<dev_n>\d*))?
    (?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?
    \s*$""",
    re.IGNORECASE | re.VERBOSE,
)
_PRE_ORDER = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}


@dataclass(frozen=True)
class Version:
    """A parsed PEP 440 version; compare with :attr:`key` (the local label is not part of it)."""

    text: str
    epoch: int
    release: tuple[int, ...]
    pre: tuple[int, int] | None
    post: int | None
    dev: int | None
    local: str | None

    @property
    def key(self) -> tuple:
        release = list(self.release)
        while len(release) > 1 and release[-1] == 0:
            release.pop()
        if self.pre is None and self.post is None and self.dev is not None:
            pre: tuple = (-1, 0)  # 1.0.dev1 sorts before 1.0a1
        elif self.pre is None:
            pre = (3, 0)
        else:
            pre = self.pre
        post = -1 if self.post is None else self.post
        dev = float("inf") if self.dev is None else self.dev
        return (self.epoch, tuple(release), pre, post, dev)

    @property
    def is_prerelease(self) -> bool:
        return self.pre is not None or self.dev is not None

    @property
    def base_key(self) -> tuple:
        """Epoch and release only (``2.1.0rc1`` and ``2.1.0.post1`` share it with ``2.1``)."""
        release = list(self.release)
        while len(release) > 1 and release[-1] == 0:
            release.pop()
        return (self.epoch, tuple(release))


def parse_version(text: str) -> Version | None:
    """``Version`` for a PEP 440 version string, or None when it is not one."""
    match = _VERSION_RE.match(text or "")
    if match is None:
        return None
    pre = None
    if match["pre_l"]:
        pre = (_PRE_ORDER[match["pre_l"].lower()], int(match["pre_n"] or 0))
    post = None
    if match["post_n1"]:
        post = int(match["post_n1"])
    elif match["post_l"]:
        post = int(match["post_n2"] or 0)
    dev = int(match["dev_n"] or 0) if match["dev_l"] else None
    local = match["local"].lower().replace("-", ".").replace("_", ".") if match["local"] else None
    return Version(
        text=text.strip(),
        epoch=int(match["epoch"] or 0),
        release=tuple(int(part) for part in match["release"].split(".")),
        pre=pre,
        post=post,
        dev=dev,
        local=local,
    )


_CLAUSE_RE = re.compile(r"^\s*(===|==|!=|~=|<=|>=|<|>)\s*(\S+?)\s*$")


def _clause_matches(version: Version, operator: str, target_text: str) -> bool:
    if operator == "===":
        return version.text == target_text
    if operator in ("==", "!=") and target_text.endswith(".*"):
        prefix = parse_version(target_text[:-2])
        if prefix is None:
            raise ValueError(f"invalid version in specifier: {operator}{target_text}")
        size = len(prefix.release)
        padded = version.release + (0,) * max(0, size - len(version.release))
        equal = version.epoch == prefix.epoch and padded[:size] == prefix.release
        return equal if operator == "==" else not equal
    target = parse_version(target_text)
    if target is None:
        raise ValueError(f"invalid version in specifier: {operator}{target_text}")
    if operator in ("==", "!="):
        equal = version.key == target.key and (target.local is None or version.local == target.local)
        return equal if operator == "==" else not equal
    if operator == "~=":
        if len(target.release) < 2:
            raise ValueError(f"~= needs at least two release segments: {target_text}")
        prefix = ".".join(str(part) for part in target.release[:-1]) + ".*"
        return version.key >= target.key and _clause_matches(version, "==", prefix)
    if operator == ">=":
        return version.key >= target.key
    if operator == "<=":
        return version.key <= target.key
    if operator == "<":
        if not version.key < target.key:
            return False
        # "<3" must not admit 3.0rc1 (unless the bound itself is a pre-release).
        return target.is_prerelease or not (version.is_prerelease and version.base_key == target.base_key)
    if operator == ">":
        if not version.key > target.key:
            return False
        # ">1.7" must not admit 1.7.post1 (unless the bound itself is a post-release).
        return target.post is not None or not (version.post is not None and version.base_key == target.base_key)
    raise ValueError(f"unknown operator {operator!r}")


def satisfies(version: str, specifier: str) -> bool:
    """Whether an installed ``version`` meets ``specifier`` (``">=1.26,<3"``; empty: any).

    An installed pre-release counts, as pip counts it for installed distributions."""
    parsed = parse_version(version)
    clauses = [clause for clause in specifier.split(",") if clause.strip()]
    if parsed is None:
        return not clauses
    for clause in clauses:
        match = _CLAUSE_RE.match(clause)
        if match is None:
            raise ValueError(f"invalid specifier clause: {clause!r}")
        if not _clause_matches(parsed, match[1], match[2]):
            return False
    return True


@dataclass(frozen=True)
class Requirement:
    """``name[extras] specifier ; marker`` with the parts Likeness uses."""

    name: str
    specifier: str = ""
    marker: str | None = None
    text: str = ""

    @property
    def key(self) -> str:
        return canonical_name(self.name)


_REQUIREMENT_RE = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*"
    r"(?:\[[^\]]*\])?\s*"
    r"(?P<spec>\(?[^;()]*\)?)?\s*"
    r"(?:;\s*(?P<marker>.*))?$"
)


def parse_requirement(text: str) -> Requirement:
    """Parse a requirement line (also the ``Requires-Dist: numpy (>=1.16)`` style of METADATA)."""
    match = _REQUIREMENT_RE.match(text)
    if match is None:
        raise ValueError(f"cannot parse requirement {text!r}")
    spec = (match["spec"] or "").strip().strip("()").replace(" ", "")
    marker = match["marker"].strip() if match["marker"] else None
    return Requirement(name=match["name"], specifier=spec, marker=marker, text=text.strip())


# --- facts of the running environment ----------------------------------------------------------

def installed_distributions(paths: Sequence[str] | None = None) -> dict[str, str]:
    """Canonical name -> version of every installed distribution (first one on the path wins,
    as at import time). ``paths`` defaults to ``sys.path``."""
    found: dict[str, str] = {}
    kwargs = {} if paths is None else {"path": [str(path) for path in paths]}
    for dist in importlib.metadata.distributions(**kwargs):
        try:
            name = dist.metadata["Name"]
            version = dist.version
        except Exception:  # a broken dist-info must not stop the installer
            continue
        if not name or not version:
            continue
        found.setdefault(canonical_name(name), version)
    return found


def installed_version(name: str, paths: Sequence[str] | None = None) -> str | None:
    """The installed version of distribution ``name``, or None."""
    return installed_distributions(paths).get(canonical_name(name))


# --- the extras' tested ranges -------------------------------------------------------------------

_PYTHON_MARKER_RE = re.compile(r"""^\s*python_(?:full_)?version\s*(==|!=|<=|>=|<|>)\s*['"]([^'"]+)['"]\s*$""")


def marker_applies(marker: str | None, python: Sequence[int] | None = None) -> bool:
    """Whether a requirement's environment marker holds for ``python`` (default: this interpreter).

    Only ``python_version`` comparisons joined by ``and`` are evaluated (all our pyproject uses);
    any other marker counts as holding, so its requirement is checked rather than ignored."""
    if not marker:
        return True
    version = ".".join(str(part) for part in (python or sys.version_info[:3]))
    for clause in re.split(r"\s+and\s+", marker.strip()):
        match = _PYTHON_MARKER_RE.match(clause)
        if match is not None and not satisfies(version, f"{match[1]}{match[2]}"):
            return False
    return True


def extra_requirements(extra: str, python: Sequence[int] | None = None) -> list[tuple[str, Requirement]]:
    """(extra that declares it, requirement) for every requirement of ``extra`` that applies to
    ``python``, with ``lora-likeness[other]`` expanded (the ``test`` extra includes ``train``)."""
    found: list[tuple[str, Requirement]] = []
    seen: set[str] = set()

    def walk(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for text in EXTRAS[name]:
            requirement = parse_requirement(text)
            if requirement.key == DISTRIBUTION:
                for inner in re.findall(r"[A-Za-z0-9_-]+", text[text.index("[") + 1:text.index("]")]):
                    walk(inner)
                continue
            if marker_applies(requirement.marker, python) and all(req.key != requirement.key for _, req in found):
                found.append((name, requirement))

    walk(extra)
    return found


@dataclass(frozen=True)
class RangeFinding:
    """An installed (or missing) package outside the range an extra of Likeness is tested with."""

    name: str
    installed: str | None  # None: not installed
    specifier: str
    extra: str

    @property
    def missing(self) -> bool:
        return self.installed is None

    def message(self) -> str:
        if self.installed is None:
            return f"{self.name} is not installed ({DISTRIBUTION}[{self.extra}] needs {self.name}{self.specifier})"
        return f"{self.name} {self.installed} is outside the tested range {self.specifier} of {DISTRIBUTION}[{self.extra}]"


def extra_findings(
    extras: Iterable[str] = ("train",),
    installed: Mapping[str, str] | None = None,
    python: Sequence[int] | None = None,
    *,
    include_missing: bool = True,
) -> list[RangeFinding]:
    """The packages of ``extras`` that are installed outside their tested range (and, with
    ``include_missing``, those not installed at all), in declaration order. ``installed``
    defaults to this environment's distributions."""
    canon = installed_distributions() if installed is None else {canonical_name(k): v for k, v in installed.items()}
    findings: list[RangeFinding] = []
    seen: set[str] = set()
    for extra in extras:
        for declared_by, requirement in extra_requirements(extra, python):
            if requirement.key in seen:
                continue
            seen.add(requirement.key)
            have = canon.get(requirement.key)
            if have is None:
                if include_missing:
                    findings.append(RangeFinding(requirement.name, None, requirement.specifier, declared_by))
            elif not satisfies(have, requirement.specifier):
                findings.append(RangeFinding(requirement.name, have, requirement.specifier, declared_by))
    return findings


#: Not declared by Likeness (it imports neither), but diffusers and peft do: named beside the stack
#: because a release of them that is too old is a common cause of "cannot import name" failures.
STACK_CONTEXT: tuple[str, ...] = ("accelerate", "huggingface-hub")


def stack_versions(installed: Mapping[str, str] | None = None, python: Sequence[int] | None = None) -> list[str]:
    """``name version`` (or ``name not installed``) for torch, each package of the ``train`` extra,
    and :data:`STACK_CONTEXT`."""
    canon = installed_distributions() if installed is None else {canonical_name(k): v for k, v in installed.items()}
    names = ["torch", *(requirement.name for _, requirement in extra_requirements("train", python)), *STACK_CONTEXT]
    return [f"{name} {canon.get(canonical_name(name)) or 'not installed'}" for name in names]


def stack_requirement_conflicts(
    installed: Mapping[str, str] | None = None,
    requires_of: Callable[[str], Iterable[str]] | None = None,
) -> list[str]:
    """What the installed training-stack packages themselves declare and this environment does
    not meet (pip check's view of them), e.g. ``peft 0.7.0 needs accelerate>=0.21.0 (have 0.20.3)``.

    ``requires_of(name)`` gives a distribution's ``Requires-Dist`` lines; by default they are read
    from this environment's metadata, and not at all when ``installed`` is a made-up environment."""
    if installed is None:
        canon = installed_distributions()
        requires_of = requires_of or _declared_requirements
    else:
        canon = {canonical_name(k): v for k, v in installed.items()}
        requires_of = requires_of or (lambda name: ())
    conflicts = []
    for name in TRAINING_STACK:
        version = canon.get(name)
        if version is None:
            continue
        for unmet in unmet_declared_requirements(requires_of(name), canon):
            conflicts.append(f"{name} {version} needs {unmet}")
    return conflicts


def _declared_requirements(name: str) -> list[str]:
    try:
        return importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
        return []


def training_stack_conflict(
    error: str | None = None,
    installed: Mapping[str, str] | None = None,
    python: Sequence[int] | None = None,
    requires_of: Callable[[str], Iterable[str]] | None = None,
) -> str:
    """One message naming why the training stack does not work: ``error`` (what failed to import,
    if known), every package of the ``train`` extra outside its tested range or missing, and what
    the installed packages declare and do not get; then the command that installs tested versions."""
    findings = extra_findings(("train",), installed, python)
    conflicts = stack_requirement_conflicts(installed, requires_of)
    if error:
        parts = [f"The training stack (diffusers, transformers, peft) failed to import: {error}"]
    else:
        parts = ["The training stack (diffusers, transformers, peft) is outside the tested ranges"]
    if findings:
        parts.append("; ".join(finding.message() for finding in findings))
    if conflicts:
        parts.append("Installed packages disagree: " + "; ".join(conflicts))
    parts.append("Installed: " + ", ".join(stack_versions(installed, python)))
    if not findings and not conflicts:
        parts.append("Every version of lora-likeness[train] is inside the tested ranges: this combination is untested, please report it")
    wanted = " ".join(f'"{requirement.text.split(";")[0].strip()}"' for _, requirement in extra_requirements("train", python))
    parts.append(f"Install tested versions with: pip install {wanted} (torch stays your own)")
    return ". ".join(parts) + "."


def onnxruntime_variants(installed: Mapping[str, str] | None = None) -> tuple[dict[str, str], bool]:
    """(installed onnxruntime variants -> version, whether they clash).

    More than one variant is a clash: they share one ``onnxruntime`` folder, the last one
    installed wins file by file, and a GPU build silently stops offering CUDA."""
    if installed is None:
        installed = installed_distributions()
    installed = {canonical_name(name): version for name, version in installed.items()}
    variants = {name: installed[name] for name in ONNXRUNTIME_VARIANTS if name in installed}
    return variants, len(variants) > 1


def torch_kind_from_version(version: str) -> tuple[str | None, str | None]:
    """(kind, CUDA version) from a torch version's local label, e.g. ``2.1.2+cu121`` ->
    ("cuda", "12.1"); (None, None) when the label says nothing (PyPI wheels have none)."""
    parsed = parse_version(version)
    label = parsed.local if parsed else None
    if not label:
        return None, None
    first = label.split(".")[0]
    if re.fullmatch(r"cu\d+", first):  # cu121 -> 12.1, cu118 -> 11.8, cu92 -> 9.2
        digits = first[2:]
        return "cuda", f"{digits[:-1]}.{digits[-1]}" if len(digits) > 1 else digits
    if first.startswith("rocm"):
        return "rocm", None
    if first.startswith("cpu"):
        return "cpu", None
    if first.startswith("xpu"):
        return "xpu", None
    return None, None


def _version_py_value(text: str, name: str) -> str | None:
    match = re.search(
        rf"^{name}\s*(?::[^=\n]*)?=\s*(?:(['\"])(?P<value>[^'\"]*)\1|None)\s*$", text, re.MULTILINE
    )
    return match["value"] if match and match["value"] else None


def torch_kind_from_version_py(text: str) -> tuple[str, str | None]:
    """(kind, CUDA version) from the text of ``torch/version.py``:
    ``cuda = '12.8'`` or ``cuda: Optional[str] = '12.8'`` -> ("cuda", "12.8"); a ``hip`` value ->
    ("rocm", None); an ``xpu`` value -> ("xpu", None); otherwise ("cpu", None)."""
    cuda = _version_py_value(text, "cuda")
    if cuda:
        return "cuda", cuda
    if _version_py_value(text, "hip"):
        return "rocm", None
    if _version_py_value(text, "xpu"):
        return "xpu", None
    return "cpu", None


def detect_torch(paths: Sequence[str] | None = None) -> tuple[str | None, str | None]:
    """(kind, CUDA version) of the installed torch, without importing it (that takes seconds,
    and A1111 runs install.py in its launcher). kind is "cuda", "rocm", "cpu", "xpu", "unknown"
    (installed but unreadable), or None when torch is absent. ``paths`` defaults to sys.path."""
    version = installed_version("torch", paths)
    if version is not None:
        kind, cuda = torch_kind_from_version(version)
        if kind is not None:
            return kind, cuda
    if paths is None:
        try:
            spec = importlib.util.find_spec("torch")
        except (ImportError, ValueError):
            spec = None
    else:
        spec = importlib.machinery.PathFinder.find_spec("torch", [str(path) for path in paths])
    if spec is None or not spec.submodule_search_locations:
        return (None, None) if version is None else ("unknown", None)
    for location in spec.submodule_search_locations:
        version_py = Path(location) / "version.py"
        try:
            text = version_py.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        return torch_kind_from_version_py(text)
    return "unknown", None


def torch_kind(paths: Sequence[str] | None = None) -> str | None:
    """"cuda", "rocm", "cpu", "xpu", "unknown", or None when torch is absent.

    This is how torch was *built* (its ``+cu130`` label): a CUDA build runs on machines without any GPU.
    Whether a GPU can be used now is :func:`cuda_device_count`."""
    return detect_torch(paths)[0]


def cuda_device_count() -> int:
    """CUDA devices this process can use now (0 without a GPU, a driver, or with CUDA_VISIBLE_DEVICES="").

    When torch is already imported (ComfyUI, A1111, our training and sweeps) torch answers. Otherwise
    torch is not imported for this (it takes seconds): the NVIDIA driver library is asked directly
    (``cuInit`` + ``cuDeviceGetCount`` through ctypes, as torch itself does; no GPU memory or context is
    taken). A machine without the driver answers at once: the library is not there.
    """
    import warnings

    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "cuda"):
        try:
            with warnings.catch_warnings():  # "CUDA initialization: ..." on a broken driver: the answer is 0
                warnings.simplefilter("ignore")
                return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
        except Exception:  # noqa: BLE001 - any failure means no usable device
            return 0
    return _driver_device_count()


def _driver_device_count() -> int:
    import ctypes

    names = {"win32": ("nvcuda.dll",), "darwin": ()}.get(sys.platform, ("libcuda.so.1", "libcuda.so"))
    for name in names:
        try:
            driver = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            count = ctypes.c_int(0)
            if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0  # e.g. CUDA_ERROR_NO_DEVICE, or a driver too old for the device
            return max(0, count.value)
        except (AttributeError, OSError):
            return 0
    return 0


@dataclass(frozen=True)
class Facts:
    """What :func:`plan` decides from. ``installed`` maps distribution names (any spelling) to
    versions; it is stored under canonical names."""

    python: tuple[int, ...]
    platform: str  # sys.platform: "linux", "win32", "darwin"
    installed: Mapping[str, str] = field(default_factory=dict)
    torch: str | None = None  # torch kind, see detect_torch
    torch_cuda: str | None = None  # CUDA version torch was built for, e.g. "12.1"

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "installed", {canonical_name(name): version for name, version in self.installed.items()}
        )

    def version(self, name: str) -> str | None:
        return self.installed.get(canonical_name(name))

    @property
    def python_text(self) -> str:
        return ".".join(str(part) for part in self.python)


def gather_facts(paths: Sequence[str] | None = None) -> Facts:
    """Facts of the running interpreter (``paths`` defaults to ``sys.path``)."""
    kind, cuda = detect_torch(paths)
    return Facts(
        python=tuple(sys.version_info[:3]),
        platform=sys.platform,
        installed=installed_distributions(paths),
        torch=kind,
        torch_cuda=cuda,
    )


# --- host pins -----------------------------------------------------------------------------------

def host_constraints(installed: Mapping[str, str]) -> list[str]:
    """pip constraints that freeze what the host owns at its installed versions.

    Each installed package of :data:`HOST_PINNED` is pinned with ``==``; while numpy is 1.x and
    opencv-python is not installed, ``opencv-python<=4.11.0.86`` keeps pip from pulling an OpenCV
    that needs numpy 2."""
    canon = {canonical_name(name): version for name, version in installed.items()}
    constraints = [f"{name}=={canon[canonical_name(name)]}" for name in HOST_PINNED if canonical_name(name) in canon]
    numpy = parse_version(canon.get("numpy", ""))
    if numpy is not None and numpy.release[0] == 1 and "opencv-python" not in canon:
        constraints.append(f"opencv-python<={OPENCV_MAX_FOR_NUMPY1}")
    return constraints


def host_pinned(installed: Mapping[str, str]) -> dict[str, str]:
    """Canonical name -> installed version of the host-owned packages that are installed."""
    canon = {canonical_name(name): version for name, version in installed.items()}
    return {canonical_name(name): canon[canonical_name(name)] for name in HOST_PINNED if canonical_name(name) in canon}


# --- which onnxruntime --------------------------------------------------------------------------

@dataclass(frozen=True)
class OnnxruntimeChoice:
    name: str  # distribution, e.g. "onnxruntime-gpu"
    requirement: str  # what to hand pip, e.g. "onnxruntime-gpu>=1.17" or "onnxruntime-gpu==1.17.1"
    reason: str


def _gpu_platform(platform: str) -> bool:
    return platform.startswith("linux") or platform == "win32"


def want_onnxruntime(facts: Facts, prefer: str | None = None) -> OnnxruntimeChoice:
    """The onnxruntime variant this environment should have.

    ``prefer``: None (decide from torch), "gpu" or "cpu" (the user's explicit choice).
    onnxruntime-gpu only when torch is a CUDA build on Linux/Windows (or asked for there); on
    Windows without CUDA an installed onnxruntime-directml is kept; otherwise onnxruntime, the CPU
    build (which on macOS also carries CoreML). If the chosen variant is installed already, its
    version is kept."""
    if prefer not in (None, "gpu", "cpu"):
        raise ValueError(f"prefer must be None, 'gpu' or 'cpu', not {prefer!r}")
    gpu_ok = _gpu_platform(facts.platform)
    if prefer == "cpu":
        name, reason = ONNXRUNTIME_CPU, "--cpu asked for the CPU build"
    elif prefer == "gpu" and gpu_ok:
        name, reason = ONNXRUNTIME_GPU, "--gpu asked for the CUDA build"
    elif prefer == "gpu":
        name, reason = ONNXRUNTIME_CPU, "--gpu asked, but onnxruntime-gpu has no macOS build; onnxruntime carries CoreML"
    elif facts.torch == "cuda" and gpu_ok:
        built = f" {facts.torch_cuda}" if facts.torch_cuda else ""
        name, reason = ONNXRUNTIME_GPU, f"torch is a CUDA{built} build"
    elif facts.platform == "win32" and facts.version(ONNXRUNTIME_DIRECTML) is not None:
        name, reason = ONNXRUNTIME_DIRECTML, "keeping onnxruntime-directml: Windows, and torch is not a CUDA build"
    else:
        if facts.platform == "darwin":
            why = "macOS: the standard build carries CoreML"
        elif facts.torch is None:
            why = "torch is not installed"
        elif facts.torch == "cuda":
            why = "torch is a CUDA build, but onnxruntime-gpu does not exist for this platform"
        else:
            why = f"torch is a {facts.torch} build"
        name, reason = ONNXRUNTIME_CPU, f"the CPU build: {why}"
    have = facts.version(name)
    if have is not None:
        requirement = f"{name}=={have}"
    elif name == ONNXRUNTIME_GPU:
        cuda = parse_version(facts.torch_cuda or "")
        requirement = GPU_REQUIREMENT_CUDA11 if cuda is not None and cuda.release[0] == 11 else GPU_REQUIREMENT
    else:
        requirement = name
    return OnnxruntimeChoice(name=name, requirement=requirement, reason=reason)


# --- the plan -----------------------------------------------------------------------------------

INSTALL = "install"
UNINSTALL = "uninstall"
BLOCKED = "blocked"
NOTHING = "nothing"
NOTE = "note"


@dataclass(frozen=True)
class Action:
    """One step of a plan.

    kind: "uninstall" (``packages`` are distribution names), "install" (``packages`` are
    requirements, resolved under ``constraints``; with ``no_deps``, pip first resolves them
    with their dependencies in a dry run, then everything it would install except ``exclude`` is
    installed with --no-deps), "blocked" (cannot fit; nothing may be done), "nothing" (all fits),
    "note" (information only). ``reason`` says why, for a person."""

    kind: str
    reason: str
    packages: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    no_deps: bool = False
    exclude: tuple[str, ...] = ()

    @property
    def changes(self) -> bool:
        return self.kind in (INSTALL, UNINSTALL)

    def describe(self) -> str:
        if self.kind == UNINSTALL:
            return f"uninstall {', '.join(self.packages)}: {self.reason}"
        if self.kind == INSTALL:
            what = " ".join(self.packages)
            if self.no_deps:
                left = f", leaving out {', '.join(self.exclude)}" if self.exclude else ""
                what += f" with --no-deps (its requirements as pip resolves them{left})"
            pins = f" [host pins: {', '.join(self.constraints)}]" if self.constraints else ""
            return f"install {what}: {self.reason}{pins}"
        if self.kind == BLOCKED:
            return f"cannot install: {self.reason}"
        if self.kind == NOTHING:
            return f"nothing to do: {self.reason}"
        return f"note: {self.reason}"


def _lower_bounds(specifier: str) -> str:
    """The ``>=`` / ``>`` clauses of a specifier (``">=9.5,<14"`` -> ``">=9.5"``)."""
    return ",".join(clause for clause in specifier.split(",") if clause.strip().startswith(">"))


def _missing_text(requirement: Requirement, have: str | None) -> str:
    return f"{requirement.text} (have {have})" if have else f"{requirement.text} (not installed)"


def plan(facts: Facts, *, prefer: str | None = None, fix_onnxruntime: bool = False) -> list[Action]:
    """The ordered actions that make the environment fit Likeness without harming the host.

    ``prefer`` ("gpu"/"cpu") and ``fix_onnxruntime`` switch an installed, working onnxruntime
    variant to the wanted one; without them only a clash or a missing onnxruntime is repaired.
    The result never installs or uninstalls torch/torchvision, never reinstalls what fits, and when
    something cannot fit the host's pins it holds only "blocked" actions."""
    pinned = host_pinned(facts.installed)
    constraints = tuple(host_constraints(facts.installed))
    notes: list[Action] = []
    blocked: list[Action] = []

    missing: list[Requirement] = []
    missing_texts: list[str] = []
    for text in REQUIREMENTS:
        requirement = parse_requirement(text)
        have = facts.version(requirement.name)
        if have is not None and satisfies(have, requirement.specifier):
            continue
        if have is not None and satisfies(have, _lower_bounds(requirement.specifier)):
            # Newer than tested: downgrading could break the host or another extension that wanted it, so it stays.
            notes.append(
                Action(
                    NOTE,
                    f"{requirement.name} {have} is newer than Likeness is tested with ({requirement.text}); install.py "
                    f"leaves it as it is. If scoring fails, please report it with the output of `likeness doctor`.",
                )
            )
            continue
        if requirement.key in pinned:
            blocked.append(
                Action(
                    BLOCKED,
                    f"Likeness needs {requirement.text}, but {requirement.name} {have} is installed and belongs "
                    f"to the host, so install.py will not change it. Upgrade it yourself only if nothing "
                    f"else in this environment needs {requirement.name} {have}.",
                )
            )
            continue
        missing.append(requirement)
        missing_texts.append(_missing_text(requirement, have))

    # onnxruntime: repair a clash, install one when there is none, switch only when asked.
    variants, clash = onnxruntime_variants(facts.installed)
    choice = want_onnxruntime(facts, prefer)
    enforce = fix_onnxruntime or prefer is not None
    uninstall: list[str] = []
    ort_install: OnnxruntimeChoice | None = None
    uninstall_reason = ""
    if clash:
        uninstall = list(variants)
        ort_install = choice
        listed = ", ".join(f"{name} {version}" for name, version in variants.items())
        uninstall_reason = (
            f"onnxruntime clash: {listed} are all installed and share one `onnxruntime` import package "
            f"(a GPU build silently loses CUDA); every variant goes, then {choice.name} comes back"
        )
    elif variants:
        (have_name,) = variants
        if have_name != choice.name:
            if enforce:
                uninstall = [have_name]
                ort_install = choice
                uninstall_reason = f"switching {have_name} to {choice.name} ({choice.reason})"
            else:
                notes.append(
                    Action(
                        NOTE,
                        f"keeping the installed {have_name} {variants[have_name]}; {choice.name} would fit better "
                        f"({choice.reason}): run `python install.py --fix-onnxruntime` to switch",
                    )
                )
    else:
        ort_install = choice
    final_ort = ort_install.name if ort_install is not None else next(iter(variants))

    # insightface declares opencv-python and (1.x/2.x) onnxruntime. Beside another cv2 distribution
    # or another onnxruntime variant those would make a second copy of cv2 / an onnxruntime clash,
    # so then it is installed with --no-deps and its other requirements are installed explicitly.
    cv2_present = [name for name in CV2_DISTRIBUTIONS if name in facts.installed]
    other_cv2 = bool(cv2_present) and "opencv-python" not in facts.installed
    exclude: list[str] = []
    if other_cv2:
        exclude.append("opencv-python")
    if final_ort != ONNXRUNTIME_CPU:
        exclude.append(ONNXRUNTIME_CPU)
    insightface_missing = next((req for req in missing if req.key == INSIGHTFACE), None)
    insightface_no_deps = insightface_missing is not None and bool(exclude)

    changes = bool(missing) or bool(uninstall) or ort_install is not None
    python_ok = satisfies(facts.python_text, REQUIRES_PYTHON)
    if not python_ok:
        message = (
            f"Python {facts.python_text} is outside Likeness's supported range ({REQUIRES_PYTHON}): "
            f"insightface and onnxruntime may have no build for it"
        )
        if changes and not blocked:
            blocked.append(Action(BLOCKED, message + "; use an environment with Python 3.10-3.12"))
        elif not changes:
            notes.append(Action(NOTE, message))
    if blocked:
        return blocked

    actions: list[Action] = list(notes)
    if uninstall:
        actions.append(Action(UNINSTALL, uninstall_reason, packages=tuple(uninstall)))

    plain = [req for req in missing if not (insightface_no_deps and req.key == INSIGHTFACE)]
    packages = [req.text for req in plain]
    reasons = []
    if plain:
        reasons.append("missing or too old: " + "; ".join(
            text for req, text in zip(missing, missing_texts) if req in plain
        ))
    if ort_install is not None:
        packages.append(ort_install.requirement)
        reasons.append(f"{ort_install.name}: {ort_install.reason}")
    if packages:
        actions.append(Action(INSTALL, "; ".join(reasons), packages=tuple(packages), constraints=constraints))
    if insightface_no_deps:
        why = []
        if other_cv2:
            why.append(f"{', '.join(cv2_present)} already provides cv2 (opencv-python beside it would be a second copy)")
        if final_ort != ONNXRUNTIME_CPU:
            why.append(f"{final_ort} is the onnxruntime here (onnxruntime beside it would clash)")
        actions.append(
            Action(
                INSTALL,
                f"{_missing_text(insightface_missing, facts.version(INSIGHTFACE))}; " + "; ".join(why),
                packages=(insightface_missing.text,),
                constraints=constraints,
                no_deps=True,
                exclude=tuple(exclude),
            )
        )
    if not any(action.changes for action in actions):
        have_ort = ", ".join(f"{name} {version}" for name, version in variants.items())
        actions.append(Action(NOTHING, f"all requirements are satisfied (onnxruntime: {have_ort})"))
    return actions


# --- helpers for executing a plan ---------------------------------------------------------------

def pip_arguments(action: Action, constraints_file: str | None) -> list[str]:
    """pip's arguments (after ``python -m pip``) for an uninstall or a plain install action."""
    if action.kind == UNINSTALL:
        return ["uninstall", "-y", *action.packages]
    if action.kind == INSTALL:
        args = ["install"]
        if constraints_file and action.constraints:
            args += ["-c", constraints_file]
        if action.no_deps:
            args.append("--no-deps")
        return args + list(action.packages)
    raise ValueError(f"a {action.kind!r} action runs no pip")


def report_installs(report: Mapping, exclude: Iterable[str] = ()) -> list[str]:
    """``name==version`` for what a ``pip install --dry-run --report`` would install, without the
    excluded distributions and never torch/torchvision/torchaudio."""
    dropped = {canonical_name(name) for name in (*exclude, *NEVER_TOUCH)}
    pins = []
    for item in report.get("install", []):
        metadata = item.get("metadata", {})
        name, version = metadata.get("name"), metadata.get("version")
        if not name or not version or canonical_name(name) in dropped:
            continue
        pins.append(f"{name}=={version}")
    return pins


def report_source_builds(report: Mapping) -> list[str]:
    """``name==version`` of what a pip report would build from a source archive (no wheel fits
    this Python under the pins): those need a compiler unless they are pure Python."""
    builds = []
    for item in report.get("install", []):
        url = (item.get("download_info") or {}).get("url", "")
        metadata = item.get("metadata", {})
        if url and not url.split("#")[0].endswith(".whl"):
            builds.append(f"{metadata.get('name')}=={metadata.get('version')}")
    return builds


def insightface_fallback_requirements(exclude: Iterable[str] = ()) -> list[str]:
    """insightface's requirements when pip cannot resolve them for us (see the constant)."""
    dropped = {canonical_name(name) for name in exclude}
    return [name for name in INSIGHTFACE_FALLBACK_REQUIREMENTS if canonical_name(name) not in dropped]


def unmet_declared_requirements(
    requires: Iterable[str], installed: Mapping[str, str]
) -> list[str]:
    """The unconditional ``Requires-Dist`` lines of a distribution that the environment does not
    meet. ``onnxruntime`` is met by any onnxruntime variant and ``opencv-python`` by any cv2
    distribution (Likeness installs them that way on purpose); lines with markers are skipped."""
    canon = {canonical_name(name): version for name, version in installed.items()}
    unmet = []
    for line in requires:
        requirement = parse_requirement(line)
        if requirement.marker:
            continue
        if requirement.key == ONNXRUNTIME_CPU:
            candidates = [canon[name] for name in ONNXRUNTIME_VARIANTS if name in canon]
        elif requirement.key == "opencv-python":
            candidates = [canon[name] for name in CV2_DISTRIBUTIONS if name in canon]
        else:
            candidates = [canon[requirement.key]] if requirement.key in canon else []
        if not any(satisfies(version, requirement.specifier) for version in candidates):
            have = f" (have {candidates[0]})" if candidates else " (not installed)"
            unmet.append(f"{requirement.name}{requirement.specifier}{have}")
    return unmet
