"""The sd-scripts backend: the same :class:`TrainConfig` run by kohya-ss/sd-scripts' ``train_network.py``
(SD1.x) or ``sdxl_train_network.py`` (SDXL), whichever the base model's family names.

Given a checkout (``config.sd_scripts`` or ``$SD_SCRIPTS_DIR``) it writes ``<out>/<name>-dataset.toml``
(sd-scripts' dataset-config format) and a tokenizer cache (``<out>/.tokenizer-cache``: every tokenizer the
script would fetch from the Hub, from our offline folders), builds the ``accelerate launch <script> …`` command,
runs it in the checkout, follows its progress (tqdm's ``n/total`` on stderr, ``epoch i/n`` and
``saving checkpoint: FILE`` lines) and collects the checkpoints it wrote. Every line of its output
is kept in ``<out>/<name>-sd-scripts.log``. States are saved each time a checkpoint is (``--save_state``),
so ``resume`` continues from the newest ``<name>-NNNNNN-state`` folder.

What the built-in trainer does and sd-scripts cannot is refused (:class:`ConfigError`) or named in a warning
(samples, identity scoring, early stopping, ``keep_best``); see :func:`prepare`.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from ..progress import Cancelled, Progress
from .config import ConfigError, TrainConfig
from .kohya_format import epoch_file_name, final_file_name
from .result import TrainingCancelled, TrainResult

TQDM_RE = re.compile(r"(\d+)/(\d+) \[")
RATE_RE = re.compile(r"([\d.]+)\s*(it/s|s/it)")
LOSS_RE = re.compile(r"avr_loss=([\d.eE+-]+)")
EPOCH_RE = re.compile(r"^\s*epoch (\d+)/(\d+)")
SAVING_RE = re.compile(r"saving checkpoint: (.+\.safetensors)\s*$")
#: CLIP's 77 positions: sd-scripts pads every caption to its tokenizer's ``model_max_length`` (ComfyUI's
#: bundled sd1_tokenizer declares 8192, which the text encoders' position embeddings reject).
CLIP_POSITIONS = 77
#: Dataset settings a dataset .toml may set; like the built-in trainer, its values win over the config's.
DATASET_SETTINGS = ("resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps")


class SdScriptsError(ConfigError):
    """The sd-scripts checkout or its ``accelerate`` cannot be used; the message says what to do."""


def find_checkout(config: TrainConfig) -> Path:
    folder = config.sd_scripts or (Path(os.environ["SD_SCRIPTS_DIR"]) if os.environ.get("SD_SCRIPTS_DIR") else None)
    if folder is None:
        raise SdScriptsError("the sd-scripts backend needs a checkout of kohya-ss/sd-scripts: pass --sd-scripts DIR or set SD_SCRIPTS_DIR")
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise SdScriptsError(f"sd-scripts folder {folder} does not exist")
    if not (folder / "train_network.py").is_file() or not (folder / "networks" / "lora.py").is_file():
        raise SdScriptsError(f"{folder} is not an sd-scripts checkout (no train_network.py and networks/lora.py); "
                             "clone https://github.com/kohya-ss/sd-scripts there")
    return folder


def find_accelerate(config: TrainConfig, checkout: Path) -> Path:
    """``config.accelerate``, else the checkout's venv (sd-scripts' or kohya_ss GUI's layout), else ``PATH``."""
    if config.accelerate is not None:
        if not Path(config.accelerate).is_file():
            raise SdScriptsError(f"accelerate {config.accelerate} does not exist")
        return Path(config.accelerate)
    names = ("Scripts/accelerate.exe", "bin/accelerate")
    for venv in (checkout / "venv", checkout / ".venv", checkout.parent / "venv", checkout.parent / ".venv"):
        for name in names:
            if (venv / name).is_file():
                return venv / name
    found = shutil.which("accelerate")
    if found:
        return Path(found)
    raise SdScriptsError(
        f"accelerate not found (looked in {checkout}/venv, {checkout}/.venv and PATH). Install sd-scripts' requirements "
        f"in a venv there (python -m venv venv && venv/bin/pip install torch -r requirements.txt), or pass --accelerate PATH"
    )


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string


def dataset_settings(config: TrainConfig, from_toml: dict | None = None) -> dict:
    """The ``[[datasets]]`` values the built-in trainer trains with (:func:`.data.load_dataset`): those of the
    dataset .toml given as ``data`` where it sets them, else ``config``'s (filled for the family)."""
    from_toml = from_toml or {}
    own = {"resolution": config.resolution, "batch_size": config.batch_size, "enable_bucket": config.buckets,
           "min_bucket_reso": config.min_bucket_reso, "max_bucket_reso": config.max_bucket_reso,
           "bucket_reso_steps": config.bucket_reso_steps}
    merged = {name: from_toml.get(name, own[name]) for name in DATASET_SETTINGS}
    if not merged["enable_bucket"]:
        for name in ("min_bucket_reso", "max_bucket_reso", "bucket_reso_steps"):
            merged.pop(name)
    return merged


def dataset_toml_text(config: TrainConfig, subsets, settings: dict | None = None) -> str:
    """sd-scripts' dataset config for ``subsets`` (DreamBooth method; absolute ``image_dir``s); ``settings``:
    the ``[[datasets]]`` values (default :func:`dataset_settings` of ``config``)."""
    general = {"caption_extension": config.caption_extension, "shuffle_caption": config.shuffle_caption, "keep_tokens": config.keep_tokens}
    dataset = dict(settings if settings is not None else dataset_settings(config))
    lines = ["# written by `likeness train` for kohya-ss/sd-scripts (--dataset_config)", "[general]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in general.items()]
    lines += ["", "[[datasets]]"] + [f"{k} = {_toml_value(v)}" for k, v in dataset.items()]
    for subset in subsets:
        entry = {"image_dir": str(Path(subset.image_dir).resolve()), "num_repeats": subset.num_repeats,
                 "class_tokens": subset.class_tokens, "is_reg": subset.is_reg, "caption_extension": subset.caption_extension,
                 "keep_tokens": subset.keep_tokens, "shuffle_caption": subset.shuffle_caption}
        lines += ["", "  [[datasets.subsets]]"] + [f"  {k} = {_toml_value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


def dataset_toml_path(config: TrainConfig) -> Path:
    return Path(config.out) / f"{config.name}-dataset.toml"


def latest_state_dir(out: Path, name: str) -> Path | None:
    """The newest ``<name>-NNNNNN-state`` (or ``<name>-state``) folder sd-scripts saved."""
    states = sorted(p for p in Path(out).glob(f"{name}-[0-9][0-9][0-9][0-9][0-9][0-9]-state") if p.is_dir())
    final = Path(out) / f"{name}-state"
    if final.is_dir():
        return final
    return states[-1] if states else None


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() or isinstance(value, float) else str(value)


def build_command(config: TrainConfig, checkout: Path | None = None, accelerate: Path | str = "accelerate",
                  dataset_toml: Path | None = None, tokenizer_cache: Path | None = None, resume_from: Path | None = None,
                  family=None, fixed_captions: bool = True, v_prediction: bool = False) -> list[str]:
    """The ``accelerate launch <family's script> …`` arguments equivalent to ``config`` (``train_network.py`` for
    SD1.x, ``sdxl_train_network.py`` for SDXL; ``family`` default: SD1.x).

    ``fixed_captions``: no subset shuffles its captions (frozen encoders' outputs may then be cached);
    ``v_prediction``: the base predicts v (the built-in trainer reads it from the base's scheduler config).

    Raises:
        ConfigError: a setting the family's script cannot do as the built-in trainer does.
    """
    from ..families import get_family

    family = family or get_family("sd1")
    name = family.sd_scripts_script
    script = str(Path(checkout) / name) if checkout else name
    mixed = config.mixed_precision
    command = [str(accelerate), "launch", "--num_cpu_threads_per_process", "1", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", mixed, "--dynamo_backend", "no", script,
               f"--pretrained_model_name_or_path={Path(config.base).resolve() if config.base else ''}",
               f"--dataset_config={dataset_toml or dataset_toml_path(config)}",
               f"--output_dir={Path(config.out).resolve()}", f"--output_name={config.name}", "--save_model_as=safetensors",
               "--network_module=networks.lora", f"--network_dim={config.rank}", f"--network_alpha={_number(config.effective_alpha)}",
               f"--learning_rate={config.lr}", f"--unet_lr={config.effective_unet_lr}"]
    if config.train_text_encoder:
        command.append(f"--text_encoder_lr={config.effective_text_encoder_lr}")  # one rate for every encoder, as here
    else:
        command.append("--network_train_unet_only")
    command += [f"--optimizer_type={config.optimizer}", f"--lr_scheduler={config.scheduler}", f"--lr_warmup_steps={config.warmup_steps}",
                f"--max_train_epochs={config.epochs}", f"--save_every_n_epochs={config.save_every_n_epochs}",
                f"--gradient_accumulation_steps={config.gradient_accumulation}", f"--mixed_precision={mixed}",
                f"--save_precision={config.save_precision}", f"--seed={config.seed}", f"--max_grad_norm={config.max_grad_norm}",
                f"--prior_loss_weight={config.prior_loss_weight}", "--save_state"]
    command += family.sd_scripts_arguments(config, fixed_captions)
    if v_prediction:
        command.append("--v_parameterization")
    if config.gradient_checkpointing:
        command.append("--gradient_checkpointing")
    if config.cache_latents:
        command.append("--cache_latents")
    if config.sdpa:
        command.append("--sdpa")
    if config.min_snr_gamma:
        command.append(f"--min_snr_gamma={config.min_snr_gamma}")
    if config.noise_offset:
        command.append(f"--noise_offset={config.noise_offset}")
    if tokenizer_cache is not None:
        command.append(f"--tokenizer_cache_dir={tokenizer_cache}")
    if resume_from is not None:
        command.append(f"--resume={resume_from}")
    return command


def predicts_v(config: TrainConfig, family) -> bool:
    """Whether the base predicts v, read where the built-in trainer reads it: a diffusers folder's
    ``scheduler/scheduler_config.json``, else ``base_config``'s, else the family's built-in config."""
    from ..families import read_json_object

    base = Path(config.base) if config.base else None
    if base is not None and base.is_dir():
        scheduler = read_json_object(base / "scheduler" / "scheduler_config.json") or family.configs["scheduler/scheduler_config.json"]
    elif config.base_config is not None:
        scheduler = read_json_object(Path(config.base_config) / "scheduler" / "scheduler_config.json")
    else:
        scheduler = family.configs["scheduler/scheduler_config.json"]
    return scheduler.get("prediction_type") == "v_prediction"


def sd_scripts_tokenizer_folder(cache: Path, hub_id: str) -> Path:
    """Where sd-scripts' ``TokenizeStrategy._load_tokenizer`` looks for ``hub_id`` under ``--tokenizer_cache_dir``."""
    return Path(cache) / hub_id.replace("/", "_")


def write_tokenizer_cache(cache: Path, family, tokenizer_dirs: dict[str, Path]) -> list[str]:
    """Put each tokenizer the family's script loads where its ``--tokenizer_cache_dir`` finds it, so it never goes
    to the Hub: vocabulary and merges from our offline folder, ``model_max_length`` 77 and the slot's pad token
    (SDXL's second: ``!``) in its configs. Returns warnings (a folder sd-scripts' slow tokenizer cannot read)."""
    from ..families import read_json_object

    warnings = []
    for slot in family.text_encoder_slots:
        hub_id = family.sd_scripts_tokenizers.get(slot.tokenizer)
        source = tokenizer_dirs.get(slot.tokenizer)
        if hub_id is None or source is None:
            continue
        source = Path(source)
        if not ((source / "vocab.json").is_file() and (source / "merges.txt").is_file()):
            warnings.append(f"tokenizer {source} has no vocab.json + merges.txt, which sd-scripts' CLIPTokenizer reads: "
                            f"sd-scripts will download {hub_id}")
            continue
        target = sd_scripts_tokenizer_folder(cache, hub_id)
        target.mkdir(parents=True, exist_ok=True)
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(source / name, target / name)
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            values = read_json_object(source / name)
            if name == "tokenizer_config.json":
                values["model_max_length"] = CLIP_POSITIONS
                values.pop("tokenizer_file", None)
            if slot.pad_token:
                values["pad_token"] = slot.pad_token
            _write_json(target / name, values)
        (target / "tokenizer.json").unlink(missing_ok=True)  # a stale fast tokenizer would disagree with the pad token
    return warnings


def _write_json(path: Path, values: dict) -> None:
    import json

    from ..images import write_text_atomic

    write_text_atomic(path, json.dumps(values, indent=2, ensure_ascii=False) + "\n")


def unsupported_warnings(config: TrainConfig) -> list[str]:
    """Settings of the built-in trainer that the sd-scripts backend does not carry out (it still trains)."""
    warnings = []
    if config.sample_every_n_epochs or config.score_refs is not None:
        warnings.append("sample images and identity scores per epoch are made by the built-in trainer only; sd-scripts "
                        "trains without them (score its checkpoints afterwards with likeness sweep)")
    if config.early_stop_patience:
        warnings.append("early_stop_patience is not applied with sd-scripts: it trains every epoch")
    if config.keep_best:
        warnings.append("keep_best is not applied with sd-scripts: the final file is the last epoch")
    if config.device not in ("auto", "cuda", "cuda:0"):
        warnings.append(f"device {config.device!r} is not passed to sd-scripts: accelerate picks the device")
    return warnings


def prepare(config: TrainConfig, resume: bool = False, write: bool = True, strict: bool = True) -> tuple[list[str], Path, dict]:
    """Resolve the checkout, accelerate, dataset and tokenizers; write the dataset config; return the command.

    ``write``: write ``<out>/<name>-dataset.toml`` and the tokenizer cache the command refers to.
    ``strict=False``: a missing checkout or accelerate falls back to plain names (``--print-command``
    on a machine without sd-scripts; ``info["placeholders"]`` then says why).

    Raises:
        ConfigError: settings the family's script cannot carry out as the built-in trainer would (SDXL:
            ``clip_skip`` other than 1; a ``bucket_reso_steps`` the script refuses), nothing to resume;
            :class:`SdScriptsError` (strict) for a missing checkout or accelerate.
        ModelLoadError: the base is not a usable SD1.x/SDXL model.
    """
    from ..families import ModelLoadError, detect_family
    from .data import resolve_subsets

    family = detect_family(config.base, config.family)
    config = config.for_family(family)
    info: dict = {"warnings": unsupported_warnings(config), "family": family.name, "script": family.sd_scripts_script}
    try:
        checkout = find_checkout(config)
        accelerate = find_accelerate(config, checkout)
    except SdScriptsError as exc:
        if strict:
            raise
        info["placeholders"] = str(exc)
        checkout = Path(config.sd_scripts or os.environ.get("SD_SCRIPTS_DIR") or ".")
        accelerate = config.accelerate or "accelerate"
        if not (checkout / "train_network.py").is_file():
            checkout = None
    subsets, from_toml, warnings, _ = resolve_subsets(config)
    info["warnings"] += warnings
    settings = dataset_settings(config, from_toml)
    multiple = family.sd_scripts_bucket_multiple
    if settings["enable_bucket"] and int(settings["bucket_reso_steps"]) % multiple:
        raise ConfigError(f"bucket_reso_steps {settings['bucket_reso_steps']}: sd-scripts' {family.sd_scripts_script} needs a "
                          f"multiple of {multiple} for {family.title} (e.g. 64)")
    fixed_captions = not any(subset.shuffle_caption for subset in subsets)
    toml_path = dataset_toml_path(config)
    # sd-scripts fetches its tokenizers from the Hub unless --tokenizer_cache_dir holds them: give it ours.
    base = Path(config.base) if config.base else None
    try:
        tokenizer_dirs = family.resolve_tokenizers({"tokenizer": config.tokenizer, "tokenizer_2": config.tokenizer_2},
                                                   base if base is not None and base.is_dir() else None)
        tokenizer_cache = Path(config.out).resolve() / ".tokenizer-cache"
    except ModelLoadError as exc:
        tokenizer_dirs, tokenizer_cache = {}, None
        info["warnings"].append(f"{exc}; sd-scripts will download " + " and ".join(family.sd_scripts_tokenizers.values()))
    resume_from = None
    if resume:
        resume_from = latest_state_dir(Path(config.out), config.name)
        if resume_from is None:
            raise ConfigError(f"nothing to resume: no {config.name}-NNNNNN-state folder in {config.out} (sd-scripts saves one per saved epoch)")
    command = build_command(config, checkout, accelerate, toml_path.resolve(), tokenizer_cache, resume_from, family,
                            fixed_captions=fixed_captions, v_prediction=predicts_v(config, family))
    if write:
        from ..images import write_text_atomic
        from ..report import preserve_file

        text = dataset_toml_text(config, subsets, settings)
        if toml_path.is_file() and toml_path.read_text(encoding="utf-8") != text:
            preserve_file(toml_path)  # an earlier, different (perhaps hand-edited) config is kept beside
        write_text_atomic(toml_path, text)
        if tokenizer_cache is not None:
            info["warnings"] += write_tokenizer_cache(tokenizer_cache, family, tokenizer_dirs)
    info.update(checkout=checkout, accelerate=accelerate, dataset_toml=toml_path, tokenizer_dirs=tokenizer_dirs)
    return command, toml_path, info


def _reader(stream, lines: queue.Queue[str | None]) -> None:
    buffer = b""
    while True:
        chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
        if not chunk:
            break
        buffer += chunk
        parts = re.split(rb"[\r\n]", buffer)
        buffer = parts.pop()
        for part in parts:
            if part.strip():
                lines.put(part.decode("utf-8", errors="replace"))
    if buffer.strip():
        lines.put(buffer.decode("utf-8", errors="replace"))
    lines.put(None)


class OutputFollower:
    """Turns sd-scripts' output lines into progress calls and a list of saved checkpoints."""

    def __init__(self, progress: Progress, epochs: int) -> None:
        self.progress = progress
        self.epochs = epochs
        self.total = 0
        self.done = 0
        self.epoch = 0
        self.loss: float | None = None
        self.saved: list[Path] = []

    def feed(self, line: str) -> None:
        saving = SAVING_RE.search(line)
        if saving:
            self.saved.append(Path(saving.group(1).strip()))
            return
        epoch = EPOCH_RE.search(line)
        if epoch:
            self.epoch = int(epoch.group(1))
            return
        if not line.lstrip().startswith("steps"):
            return
        match = TQDM_RE.search(line)
        if not match:
            return
        done, total = int(match.group(1)), int(match.group(2))
        loss = LOSS_RE.search(line)
        if loss:
            self.loss = float(loss.group(1))
        if total != self.total:
            self.total = total
            self.done = 0
            self.progress.start(total, "sd-scripts train_network")
        if done > self.done:
            speed = RATE_RE.search(line)
            rate = f" {speed.group(1)} {speed.group(2)}" if speed else ""
            loss_text = f" loss {self.loss:.4f}" if self.loss is not None else ""
            self.progress.advance(done - self.done, detail=f"ep {self.epoch}/{self.epochs}{loss_text}{rate}")
            self.done = done


def train_with_sd_scripts(config: TrainConfig, progress: Progress, resume: bool = False):
    """Run sd-scripts for ``config`` and collect its checkpoints (see module docstring)."""
    command, _, info = prepare(config, resume=resume, write=True)
    result = TrainResult(Path(config.out), config.name, command=command, warnings=list(info["warnings"]))
    log_path = Path(config.out) / f"{config.name}-sd-scripts.log"
    follower = OutputFollower(progress, config.epochs)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    popen_kwargs = {"start_new_session": True} if os.name == "posix" else {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    try:
        process = subprocess.Popen(command, cwd=str(info["checkout"]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, **popen_kwargs)
    except OSError as exc:
        raise SdScriptsError(f"cannot start {command[0]}: {exc}") from exc
    lines: queue.Queue[str | None] = queue.Queue()
    thread = threading.Thread(target=_reader, args=(process.stdout, lines), daemon=True)
    thread.start()
    tail: list[str] = []
    with open(log_path, "a", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        try:
            while True:
                progress.check()
                try:
                    line = lines.get(timeout=0.5)
                except queue.Empty:
                    continue
                if line is None:
                    break
                log.write(line + "\n")
                tail = (tail + [line])[-30:]
                follower.feed(line)
        except Cancelled as exc:
            _stop(process)
            result.cancelled = True
            result.checkpoints = _collect(config, follower)
            state = latest_state_dir(Path(config.out), config.name)
            result.state = state
            raise TrainingCancelled(f"{exc}; sd-scripts stopped" + (f", resume continues from {state.name}" if state else
                                    " before its first saved epoch (nothing to resume)"), result) from exc
    code = process.wait()
    result.checkpoints = _collect(config, follower)
    final = Path(config.out) / final_file_name(config.name)
    result.final = final if final.is_file() else None
    result.steps = follower.done
    result.epochs_done = len(result.checkpoints) + (1 if result.final else 0)
    result.state = latest_state_dir(Path(config.out), config.name)
    if code != 0:
        raise SdScriptsError(f"sd-scripts exited with code {code}; the last lines (full log: {log_path}):\n" + "\n".join(tail[-15:]))
    return result


def _collect(config: TrainConfig, follower: OutputFollower) -> list[Path]:
    out = Path(config.out)
    found = {p.resolve() for p in out.glob(f"{config.name}-[0-9][0-9][0-9][0-9][0-9][0-9].safetensors")}
    found |= {p.resolve() for p in follower.saved if p.name != final_file_name(config.name) and p.is_file()}
    return sorted(found, key=lambda p: p.name)


def _stop(process: subprocess.Popen) -> None:
    """Interrupt sd-scripts (its whole process group), then terminate it if it does not stop."""
    try:
        if os.name == "posix":
            os.killpg(process.pid, signal.SIGINT)
        else:  # pragma: no cover - Windows
            process.send_signal(signal.CTRL_BREAK_EVENT)
        process.wait(timeout=30)
    except (subprocess.TimeoutExpired, ProcessLookupError, OSError):
        process.kill()
        process.wait()


def expected_checkpoints(config: TrainConfig) -> list[str]:
    """File names sd-scripts writes for ``config`` (per saved epoch, then the final one)."""
    names = [epoch_file_name(config.name, e) for e in range(1, config.epochs) if e % config.save_every_n_epochs == 0]
    return names + [final_file_name(config.name)]


def python_of(accelerate: Path) -> str:
    """The interpreter beside an ``accelerate`` executable (for ``train_network.py --help`` checks)."""
    folder = Path(accelerate).parent
    for name in ("python", "python3", "python.exe"):
        if (folder / name).is_file():
            return str(folder / name)
    return sys.executable
