"""The built-in LoRA trainer (diffusers + peft), writing Kohya files per epoch; resumable.

Entry point for every front door::

    result = train_lora(TrainConfig(base=..., data=..., out=..., name="me"), progress)

It follows sd-scripts' ``train_network.py`` / ``sdxl_train_network.py``: DDPM noise on VAE latents,
epsilon (or v) MSE loss with optional min-SNR weighting, noise offset and prior-loss weight for
regularisation images, AdamW, a diffusers learning-rate schedule, gradient accumulation and clipping.
What differs between SD1.x and SDXL (text encoders, conditioning, Kohya names, defaults) is asked of
the base model's family (:mod:`lora_likeness.families`); nothing here branches on it. Frozen text
encoders' outputs are cached per caption, like the latents. Progress goes
through :class:`lora_likeness.progress.Progress`; ``progress.check()`` between optimizer steps
raises :class:`~lora_likeness.progress.Cancelled`, upon which the state is saved and
:class:`TrainingCancelled` (a ``Cancelled``) is raised; ``resume=True`` continues from it.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from pathlib import Path

import numpy as np

from ..progress import Cancelled, Progress
from .config import ConfigError, TrainConfig
from .data import DatasetInfo, epoch_batches, load_dataset, load_training_image
from .kohya_format import NETWORK_MODULE, epoch_file_name, file_sha256, final_file_name, legacy_model_hash, save_lora_file
from .result import TrainingCancelled, TrainResult
from .state import find_state, legacy_state_path, load_state, optimizer_from_parts, optimizer_to_parts, save_state, state_path

log = logging.getLogger(__name__)


def pick_device(requested: str = "auto"):
    import torch

    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _step_generator(seed: int, *indices: int):
    """A CPU generator for one (seed, indices) tuple: the same numbers whatever ran before."""
    import torch

    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *[int(i) for i in indices]]).generate_state(2)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


def _weight_dtype(config: TrainConfig, device, warnings: list[str]):
    import torch

    if config.mixed_precision == "fp16":
        if device.type == "cpu":
            warnings.append("fp16 is not supported on the CPU: training in float32 (use --mixed-precision bf16 or no)")
            return torch.float32
        return torch.float16
    if config.mixed_precision == "bf16":
        return torch.bfloat16
    return torch.float32


def _save_dtype(config: TrainConfig):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32}[config.save_precision]


def _foreach(device) -> bool | None:
    """AdamW's ``foreach`` for ``device``: on a CPU the multi-tensor code gives the same numbers as the per-tensor
    loop (torch's CPU default) without a Python round per LoRA tensor; elsewhere torch chooses."""
    return True if device.type == "cpu" else None


def _make_optimizer(config: TrainConfig, groups: list[dict], warnings: list[str], device):
    import torch

    if config.optimizer == "AdamW8bit":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(groups, lr=config.lr, betas=(0.9, 0.999), weight_decay=0.01), "bitsandbytes.optim.AdamW8bit"
        except Exception as exc:  # noqa: BLE001 - missing, or a build without CUDA
            warnings.append(f"AdamW8bit needs bitsandbytes ({exc.__class__.__name__}: {exc}); using AdamW")
    return (torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), weight_decay=0.01, eps=1e-8, foreach=_foreach(device)),
            "torch.optim.AdamW")


def min_snr_weight(scheduler, timesteps, gamma: float, v_prediction: bool):
    """sd-scripts' ``apply_snr_weight``: ``min(SNR, gamma) / SNR`` (``/ (SNR + 1)`` for v-prediction)."""
    import torch

    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    return clipped / (snr + 1) if v_prediction else clipped / snr


class _Trainer:
    def __init__(self, config: TrainConfig, progress: Progress, resume: bool, base_model=None) -> None:
        self.config = config
        self.progress = progress
        self.resume = resume
        self.base_model = base_model
        self.result = TrainResult(Path(config.out), config.name)
        self.warnings = self.result.warnings
        self.loss_rows: list[dict] = []
        self.session = {"session_id": uuid.uuid4().int % (2 ** 31), "started_at": time.time()}

    # -- setup -----------------------------------------------------------------------------------

    def setup(self) -> None:
        import torch

        from ..families import detect_family
        from .network import attach_lora, initialise_like_kohya

        # The family first (a header read): it decides the defaults the dataset's buckets depend on.
        family = self.base_model.family if self.base_model is not None else detect_family(self.config.base, self.config.family)
        self.family = family
        config = self.config = self.config.for_family(family)
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        self.dataset: DatasetInfo = load_dataset(config)
        self.warnings += self.dataset.warnings
        self._check_outputs()
        self.device = pick_device(config.device)
        self.weight_dtype = _weight_dtype(config, self.device, self.warnings)
        parts = self.base_model or family.load(Path(config.base), {"tokenizer": config.tokenizer, "tokenizer_2": config.tokenizer_2},
                                               config.base_config, dtype=self.weight_dtype)
        self.parts = parts
        self.v_prediction = parts.noise_scheduler.config.get("prediction_type") == "v_prediction"
        self.vae_dtype = family.vae_dtype(parts.vae, self.weight_dtype)
        for model, dtype in ((parts.unet, self.weight_dtype), *((e, self.weight_dtype) for e in parts.text_encoders.values()),
                             (parts.vae, self.vae_dtype)):
            # Cast only when needed (diffusers warns on every dtype cast).
            if next(model.parameters()).dtype != dtype:
                model.to(dtype=dtype)
            model.to(self.device)
            model.requires_grad_(False)
        parts.vae.eval()
        if not config.sdpa:
            from diffusers.models.attention_processor import AttnProcessor

            parts.unet.set_attn_processor(AttnProcessor())
        self.network = attach_lora(family.lora_components(parts.modules(), text_encoders=config.train_text_encoder),
                                   config.rank, config.effective_alpha)
        initialise_like_kohya(self.network, config.seed)
        self.trainable = self.network.parameters()  # looked up once: every step clips and steps these
        if config.gradient_checkpointing:
            parts.unet.enable_gradient_checkpointing()
            if config.train_text_encoder:
                for encoder in parts.text_encoders.values():
                    try:
                        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                    except TypeError:  # transformers < 4.35
                        encoder.gradient_checkpointing_enable()
        parts.unet.train()
        for encoder in parts.text_encoders.values():
            encoder.train(config.train_text_encoder)
        # Frozen encoders give the same states for the same caption: encode each caption once (sd-scripts'
        # --cache_text_encoder_outputs). Shuffled captions are new text every epoch, so they are encoded per step.
        shuffled = any(s.shuffle_caption for s in self.dataset.subsets)
        self.text_cache: dict | None = None if config.train_text_encoder or shuffled else {}

        groups = [{"params": self.network.parameters("unet"), "lr": config.effective_unet_lr}]
        if config.train_text_encoder:
            groups.append({"params": self.network.parameters(*parts.text_encoders), "lr": config.effective_text_encoder_lr})
        self.optimizer, self.optimizer_name = _make_optimizer(config, groups, self.warnings, self.device)
        self.batches_per_epoch = len(epoch_batches(self.dataset, 1, config.seed))
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / config.gradient_accumulation)
        self.total_steps = self.steps_per_epoch * config.epochs
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(config.scheduler, self.optimizer, num_warmup_steps=config.warmup_steps,
                                          num_training_steps=self.total_steps)
        self.scaler = None
        if self.weight_dtype == torch.float16 and self.device.type == "cuda":
            self.scaler = _grad_scaler()
        self.epoch, self.next_batch, self.global_step = 1, 0, 0
        self.best_state = None
        self.scores: dict[int, float | None] = {}
        from .samples import EarlyStop

        self.early = EarlyStop(config.early_stop_patience, config.early_stop_min_delta)
        self.result.checkpoints = []
        if self.resume:
            self._load_state()
        self._base_hashes = self._hash_base()
        self.prompt_default = next((s.class_tokens for s in self.dataset.subsets if not s.is_reg and s.class_tokens), config.name)
        self.scorer = None
        if config.score_refs is not None:
            from .samples import SampleScorer

            self.scorer = SampleScorer(config, self.progress)
        self.latents: dict[int, object] = {}
        if config.cache_latents:
            self._cache_latents()

    def _check_outputs(self) -> None:
        """Never overwrite checkpoints of an earlier run unless it is being resumed."""
        out, name = Path(self.config.out), self.config.name
        existing = sorted(out.glob(f"{name}-[0-9][0-9][0-9][0-9][0-9][0-9].safetensors")) + [p for p in [out / final_file_name(name)] if p.exists()]
        saved = find_state(out, name)  # also the name earlier versions gave it
        if self.resume:
            if saved is None:
                raise ConfigError(f"nothing to resume: {state_path(out, name)} does not exist")
            return
        if existing or saved is not None:
            raise ConfigError(f"{out} already holds checkpoints or a training state named {name!r} ({(existing or [saved])[0].name}); "
                              "pass --resume to continue that run, or choose another --name or --out")

    def _hash_base(self) -> dict:
        base = Path(self.config.base) if self.config.base else None
        if base is None or not base.is_file():
            return {}
        return {"ss_sd_model_hash": legacy_model_hash(base), "ss_new_sd_model_hash": file_sha256(base)}

    # -- latents ---------------------------------------------------------------------------------

    def _pixels(self, indices: list[int]):
        import torch

        images = [load_training_image(self.dataset.items[i].path, self.dataset.items[i].bucket) for i in indices]
        array = np.stack(images).astype(np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(0, 3, 1, 2).to(self.device, self.vae_dtype)

    def _encode(self, indices: list[int], generator):
        import torch

        with torch.no_grad():
            dist = self.parts.vae.encode(self._pixels(indices)).latent_dist
            noise = torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32).to(dist.mean.device, dist.mean.dtype)
            latents = dist.mean + dist.std * noise  # latent_dist.sample() with a CPU generator
        return latents.float() * self.parts.vae.config.scaling_factor

    def _cache_latents(self) -> None:
        items = self.dataset.items
        self.progress.start(len(items), "caching latents")
        for index in range(len(items)):
            self.progress.check()
            self.latents[index] = self._encode([index], _step_generator(self.config.seed, 1, index))[0].cpu()
            self.progress.advance(1, detail=items[index].path.name)
        self.progress.finish()
        if self.device.type != "cpu" and not self.config.sample_every_n_epochs:
            self.parts.vae.to("cpu")  # not needed again: free its memory for training

    def _batch_latents(self, indices: list[int], generator):
        import torch

        if self.config.cache_latents:
            return torch.stack([self.latents[i] for i in indices]).to(self.device)
        return self._encode(indices, generator)

    # -- one optimizer step ----------------------------------------------------------------------

    def _micro_step(self, samples, micro_index: int) -> float:
        import torch
        import torch.nn.functional as F

        config, parts = self.config, self.parts
        generator = _step_generator(config.seed, 2, micro_index)
        latents = self._batch_latents([s.item for s in samples], generator)
        noise = torch.randn(latents.shape, generator=generator)
        if config.noise_offset:
            noise = noise + config.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
        timesteps = torch.randint(0, parts.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
        noise, timesteps = noise.to(self.device), timesteps.to(self.device)
        noisy = parts.noise_scheduler.add_noise(latents, noise, timesteps)
        autocast = torch.autocast(device_type=self.device.type, dtype=self.weight_dtype, enabled=self.weight_dtype != torch.float32)
        with autocast:
            conditioning = self._conditioning([s.caption for s in samples])
            inputs = self.family.unet_inputs(parts, conditioning, [self.dataset.items[s.item].geometry for s in samples])
            prediction = parts.unet(noisy.to(self.weight_dtype), timesteps, **inputs).sample
        target = parts.noise_scheduler.get_velocity(latents, noise, timesteps) if self.v_prediction else noise
        loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        loss = loss * torch.tensor([s.weight for s in samples], device=loss.device)
        if config.min_snr_gamma:
            loss = loss * min_snr_weight(parts.noise_scheduler, timesteps, config.min_snr_gamma, self.v_prediction)
        loss = loss.mean()
        scaled = loss / config.gradient_accumulation
        (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        return float(loss.detach().cpu())

    def _conditioning(self, captions: list[str]):
        """The family's text conditioning of ``captions``: from the cache when the encoders are frozen."""
        import torch

        from ..families import Conditioning

        if self.text_cache is None:
            with torch.set_grad_enabled(self.config.train_text_encoder):
                return self.family.encode_prompts(self.parts, captions, self.config.clip_skip)
        missing = [c for c in dict.fromkeys(captions) if c not in self.text_cache]
        if missing:
            with torch.no_grad():
                encoded = self.family.encode_prompts(self.parts, missing, self.config.clip_skip)
            for index, caption in enumerate(missing):
                self.text_cache[caption] = Conditioning(encoded.hidden[index:index + 1],
                                                        None if encoded.pooled is None else encoded.pooled[index:index + 1])
        return Conditioning.stack([self.text_cache[c] for c in captions])

    def _optimizer_step(self) -> None:
        import torch

        params = self.trainable
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    # -- the loop ----------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        config = self.config
        accumulation = config.gradient_accumulation
        self.progress.start(self.total_steps, f"training {config.name}")
        if self.global_step:
            self.progress.advance(self.global_step, detail="resumed")
        started, steps_this_session = time.perf_counter(), 0
        stop = False
        while self.epoch <= config.epochs and not stop:
            batches = epoch_batches(self.dataset, self.epoch, config.seed, config.prior_loss_weight)
            while self.next_batch < len(batches):
                self.progress.check()
                group = batches[self.next_batch:self.next_batch + accumulation]
                losses = []
                for offset, samples in enumerate(group):
                    micro = (self.epoch - 1) * self.batches_per_epoch + self.next_batch + offset
                    losses.append(self._micro_step(samples, micro))
                if len(group) < accumulation:  # the epoch's last, short group: average over what it had
                    for param in self.trainable:
                        if param.grad is not None:
                            param.grad.mul_(accumulation / len(group))
                lrs = [g["lr"] for g in self.optimizer.param_groups]
                self._optimizer_step()
                self.next_batch += len(group)
                self.global_step += 1
                steps_this_session += 1
                loss = float(np.mean(losses))
                self.loss_rows.append({"step": self.global_step, "epoch": self.epoch, "loss": loss,
                                       "lr_unet": lrs[0], "lr_text_encoder": lrs[1] if len(lrs) > 1 else 0.0})
                rate = steps_this_session / max(time.perf_counter() - started, 1e-9)
                self.progress.advance(1, detail=f"ep {self.epoch}/{config.epochs} loss {loss:.4f} {rate:.2f} it/s")
            stop = self._end_epoch()
            self.epoch += 1
            self.next_batch = 0
        self.progress.finish()
        self._finish(stopped_early=stop)
        return self.result

    def _end_epoch(self) -> bool:
        """Save / sample / score after an epoch; returns True when early stopping says stop."""
        config, epoch = self.config, self.epoch
        last = epoch == config.epochs
        tensors = None
        if epoch % config.save_every_n_epochs == 0 and not last:
            tensors = self.network.kohya_state_dict(_save_dtype(config))
            path = Path(config.out) / epoch_file_name(config.name, epoch)
            save_lora_file(path, tensors, self._metadata(epoch))
            self.result.checkpoints.append(path)
        stop = False
        if config.sample_every_n_epochs and (epoch % config.sample_every_n_epochs == 0 or last):
            stop = self._sample_and_score(epoch)
        self.result.epochs_done = epoch
        if not last and not stop:
            self._save_state(epoch + 1, 0)
        self._write_loss()
        return stop

    def _sample_and_score(self, epoch: int) -> bool:
        import torch

        from .samples import generate_samples, sample_prompts

        dtype = self.weight_dtype if self.device.type != "cpu" else torch.float32
        written = generate_samples(self.parts, self.config, epoch, sample_prompts(self.config, self.prompt_default), self.device, dtype)
        self.result.samples[epoch] = [p for p, _ in written]
        if self.scorer is None:
            return False
        score = self.scorer.score(epoch, [rgb for _, rgb in written])
        self.scores[epoch] = score.mean
        previous_best = self.early.best_epoch
        stop = self.early.update(epoch, score.mean)
        if self.config.keep_best and self.early.best_epoch == epoch and previous_best != epoch:
            self.best_state = (epoch, self.global_step, self.network.kohya_state_dict(_save_dtype(self.config)))
        return stop

    def _finish(self, stopped_early: bool) -> None:
        config = self.config
        epoch = self.epoch - 1
        tensors, meta_epoch, meta_steps = self.network.kohya_state_dict(_save_dtype(config)), epoch, self.global_step
        if config.keep_best and self.best_state is not None:
            meta_epoch, meta_steps, tensors = self.best_state
        final = Path(config.out) / final_file_name(config.name)
        save_lora_file(final, tensors, self._metadata(meta_epoch, meta_steps))
        self.result.final = final
        self.result.steps = self.global_step
        self.result.stopped_early = stopped_early
        self.result.scores = dict(self.scores)
        self.result.best_epoch = self.early.best_epoch
        self._save_state(self.epoch, 0, finished=True)
        self._write_loss()

    # -- metadata --------------------------------------------------------------------------------

    def _metadata(self, epoch: int, steps: int | None = None) -> dict:
        from .. import __version__

        config, dataset = self.config, self.dataset
        resolution = dataset.resolution
        metadata = {
            "ss_session_id": self.session["session_id"],
            "ss_training_started_at": self.session["started_at"],
            "ss_training_finished_at": time.time(),
            "ss_output_name": config.name,
            "ss_learning_rate": config.lr,
            "ss_unet_lr": config.effective_unet_lr,
            "ss_text_encoder_lr": config.effective_text_encoder_lr,
            "ss_num_train_images": dataset.num_train_images,
            "ss_num_reg_images": dataset.num_reg_images,
            "ss_num_batches_per_epoch": self.batches_per_epoch,
            "ss_num_epochs": config.epochs,
            "ss_epoch": epoch,
            "ss_steps": self.global_step if steps is None else steps,
            "ss_max_train_steps": self.total_steps,
            "ss_gradient_checkpointing": config.gradient_checkpointing,
            "ss_gradient_accumulation_steps": config.gradient_accumulation,
            "ss_lr_warmup_steps": config.warmup_steps,
            "ss_lr_scheduler": config.scheduler,
            "ss_network_module": NETWORK_MODULE,
            "ss_network_dim": config.rank,
            "ss_network_alpha": config.effective_alpha,
            "ss_network_dropout": None,
            "ss_mixed_precision": config.mixed_precision,
            "ss_full_fp16": False,
            "ss_clip_skip": config.clip_skip,
            "ss_cache_latents": config.cache_latents,
            "ss_seed": config.seed,
            "ss_noise_offset": config.noise_offset or None,
            "ss_min_snr_gamma": config.min_snr_gamma or None,
            "ss_prior_loss_weight": config.prior_loss_weight,
            "ss_optimizer": self.optimizer_name + "(weight_decay=0.01,betas=(0.9, 0.999))",
            "ss_max_grad_norm": config.max_grad_norm,
            "ss_batch_size_per_device": dataset.batch_size,
            "ss_total_batch_size": dataset.batch_size * config.gradient_accumulation,
            "ss_resolution": f"({resolution[0]}, {resolution[1]})",
            "ss_enable_bucket": dataset.enable_bucket,
            "ss_min_bucket_reso": config.min_bucket_reso,
            "ss_max_bucket_reso": config.max_bucket_reso,
            "ss_bucket_info": dataset.bucket_info(),
            "ss_keep_tokens": config.keep_tokens,
            "ss_shuffle_caption": config.shuffle_caption,
            "ss_dataset_dirs": dataset.dirs_info(reg=False),
            "ss_reg_dataset_dirs": dataset.dirs_info(reg=True),
            "ss_tag_frequency": dataset.tag_frequency(),
            "ss_sd_model_name": Path(config.base).name if config.base else "",
            "ss_training_comment": f"trained with Likeness {__version__} (built-in diffusers + peft trainer)",
        }
        metadata.update(self.family.lora_metadata(resolution, config.name, self.session["started_at"],
                                                  self.parts.noise_scheduler.config.get("prediction_type", "epsilon")))
        metadata.update(self._base_hashes)
        if epoch in self.scores and self.scores[epoch] is not None:
            metadata["likeness_identity_score"] = f"{self.scores[epoch]:.4f}"
        return metadata

    # -- state -------------------------------------------------------------------------------------

    def _save_state(self, epoch: int, next_batch: int, finished: bool = False) -> None:
        tensors = {f"lora.{k}": v.detach().cpu().float().contiguous() for k, v in self.network.named_parameters()}
        optimizer_tensors, optimizer_doc = optimizer_to_parts(self.optimizer)
        tensors.update(optimizer_tensors)
        if self.best_state is not None:
            tensors.update({f"best.{k}": v for k, v in self.best_state[2].items()})
        document = {
            "epoch": epoch, "next_batch": next_batch, "global_step": self.global_step, "finished": finished,
            "config": self.config.to_dict(), "optimizer": optimizer_doc,
            "lr_scheduler": {k: v for k, v in self.lr_scheduler.state_dict().items() if k != "lr_lambdas"},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "loss": self.loss_rows, "scores": {str(k): v for k, v in self.scores.items()},
            "early_stop": self.early.as_dict(), "best": list(self.best_state[:2]) if self.best_state else None,
            "session": self.session, "checkpoints": [p.name for p in self.result.checkpoints],
            "dataset": [[str(i.path), i.bucket[0], i.bucket[1], i.caption] for i in self.dataset.items],
            "samples": {str(k): [str(p) for p in v] for k, v in self.result.samples.items()},
        }
        self.result.state = save_state(state_path(self.config.out, self.config.name), tensors, document)
        # A state saved under the earlier name (which LoRA loaders list) is superseded now.
        legacy_state_path(self.config.out, self.config.name).unlink(missing_ok=True)

    def _load_state(self) -> None:
        path = find_state(self.config.out, self.config.name) or state_path(self.config.out, self.config.name)
        tensors, document = load_state(path)
        if document.get("finished"):
            raise ConfigError(f"{path.name}: that run already finished ({document['global_step']} steps); nothing to resume")
        saved = document["config"]
        for key in ("rank", "alpha", "epochs", "batch_size", "gradient_accumulation", "seed", "lr", "unet_lr", "text_encoder_lr",
                    "optimizer", "scheduler", "warmup_steps", "resolution", "repeats"):
            now = self.config.to_dict().get(key)
            if saved.get(key) != now:
                raise ConfigError(f"resume: {key} was {saved.get(key)!r} in the saved run but is {now!r} now; "
                                  "resume with the same settings (or start a new run with another --name)")
        dataset_now = [[str(i.path), i.bucket[0], i.bucket[1], i.caption] for i in self.dataset.items]
        if document["dataset"] != dataset_now:
            raise ConfigError("resume: the training images or captions changed since the state was saved; "
                              "restore them, or start a new run with another --name")
        self.network.load_kohya_state_dict({k[len("lora."):]: v for k, v in tensors.items() if k.startswith("lora.")})
        optimizer_from_parts(self.optimizer, tensors, document["optimizer"])
        for group in self.optimizer.param_groups:
            if "foreach" in group:  # the saved run's choice was for its device
                group["foreach"] = _foreach(self.device)
        self.lr_scheduler.load_state_dict(dict(document["lr_scheduler"], lr_lambdas=[None] * len(self.optimizer.param_groups)))
        if self.scaler is not None and document.get("scaler"):
            self.scaler.load_state_dict(document["scaler"])
        self.epoch, self.next_batch, self.global_step = document["epoch"], document["next_batch"], document["global_step"]
        self.loss_rows = list(document["loss"])
        self.scores = {int(k): v for k, v in document["scores"].items()}
        early = document["early_stop"]
        self.early.best, self.early.best_epoch, self.early.waited = early["best"], early["best_epoch"], early["waited"]
        if document.get("best"):
            best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
            self.best_state = (document["best"][0], document["best"][1], best)
        self.session = document["session"]
        self.result.checkpoints = [Path(self.config.out) / n for n in document["checkpoints"]]
        self.result.samples = {int(k): [Path(p) for p in v] for k, v in document.get("samples", {}).items()}
        self.result.epochs_done = self.epoch - 1

    def save_interrupted(self) -> None:
        """Called on cancellation: the state at the last completed optimizer step."""
        self._save_state(self.epoch, self.next_batch)
        self._write_loss()
        self.result.cancelled = True
        self.result.steps = self.global_step

    def _write_loss(self) -> None:
        from .loss_log import write_loss_files

        scores = {k: v for k, v in self.scores.items() if v is not None}
        self.result.loss_csv, self.result.loss_plot = write_loss_files(Path(self.config.out), self.config.name, self.loss_rows, scores)


def _grad_scaler():
    import torch

    try:
        return torch.amp.GradScaler("cuda")
    except (AttributeError, TypeError):  # torch < 2.3
        return torch.cuda.amp.GradScaler()


def train_lora(config: TrainConfig, progress: Progress | None = None, resume: bool = False, base_model=None) -> TrainResult:
    """Train a LoRA as ``config`` says; the one entry point of the CLI and the host nodes.

    Args:
        config: the run's settings (validated here).
        progress: receives ``start``/``advance``/``finish``; its ``check()`` is called between optimizer
            steps and raises :class:`Cancelled` when the user cancelled.
        resume: continue the run saved in ``<out>/<name>.likeness-state`` (or an earlier version's ``<name>-state.safetensors``).
        base_model: an already loaded :class:`~lora_likeness.families.LoadedModel` (hosts that hold one); default: load ``config.base``.

    Returns:
        :class:`TrainResult` with the checkpoints, loss log, samples and scores.

    Raises:
        ConfigError / ModelLoadError: settings or files the user must fix (the message says what).
        TrainingCancelled: cancelled; the state was saved, ``resume=True`` continues.
    """
    config.validate(need_base=base_model is None)
    progress = progress or Progress()
    if config.backend == "sd-scripts":
        from .sd_scripts import train_with_sd_scripts

        return train_with_sd_scripts(config, progress, resume=resume)
    trainer = _Trainer(config, progress, resume, base_model)
    trainer.setup()
    try:
        return trainer.run()
    except Cancelled as exc:
        trainer.save_interrupted()
        raise TrainingCancelled(f"{exc}; state saved to {trainer.result.state}, continue with --resume", trainer.result) from exc
