"""The training loop on accelerate: adapters on a frozen FLUX Fill model, the ICEdit objective,
gradient accumulation and clipping, Prodigy or AdamW, EMA, checkpoints with exact resume, periodic
validation edits and metric logs.

One optimizer step consumes `batch_size x grad_accum` samples per process. Runs are reproducible from
the seed: data order and every per-sample random draw depend only on (seed, epoch, position) (see
`stream`), and checkpoints restore weights, optimizer, scheduler, RNG states and the data position.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .. import checkpoints as ckpt
from ..canvas import PanelSize, crop_right
from ..files import write_atomic
from ..images import save_image_atomic
from .adapters import add_lora, add_moe, export_adapter, init_adapter_weights, trainable_parameters
from .config import ConfigError, TrainConfig, write_yaml
from .data import EditDataset, EditSample, TaskShareDataset, open_dataset
from .objective import FlowMatchingObjective
from .paraphrase import noisy_states
from .stream import BatchStream, edit_mask_canvas, first_samples, panel_buckets
from .thesaurus import load_thesaurus

TEXT_NOISE_SEED = 0x7E47  # mixed into a sample's seed for its text noise (a stream apart from its latent noise)

logger = logging.getLogger("diptych.train")


@dataclass
class TrainResult:
    """What a finished (or stopped) run left behind."""

    step: int
    adapter: Path | None  # the exported adapter file (in the output folder when the run finished)
    checkpoint: Path | None
    losses: list[float]  # per optimizer step of this invocation


class Trainer:
    """Trains an edit adapter as `config` says.

    `pipe` / `encoder` / `dataset` / `validation` replace what the config would load (for the built-in
    models or tests): a `FluxFillPipeline`, a `PromptEncoder`, an `EditDataset` and a list of
    `EditSample`s for validation grids.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        pipe=None,
        encoder=None,
        dataset: EditDataset | None = None,
        validation: list[EditSample] | None = None,
        show_progress: bool = True,
    ):
        self.config = config.validate()
        needed = [("output", True), ("base", pipe is None), ("data", dataset is None)]
        for name, required in needed:
            if required and not getattr(config, name):
                raise ConfigError(f"{name} is required (--{name} on the command line or '{name}:' in the YAML)")
        self.pipe = pipe
        self.encoder = encoder
        self.dataset = dataset
        self.validation = validation
        self.show_progress = show_progress
        self.output = Path(config.output)
        self.step = 0

    # ================================================================== setup
    def _setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        cfg = self.config
        precision = cfg.mixed_precision
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_available() and not cfg.cpu else "fp32"
        handlers = [DistributedDataParallelKwargs(find_unused_parameters=cfg.adapter == "moe")]
        self.accelerator = acc = _accelerator(
            Accelerator, mixed_precision="bf16" if precision == "bf16" else "no", cpu=cfg.cpu, kwargs_handlers=handlers
        )
        _check_strategy(acc)
        self.weight_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.is_main = acc.is_main_process
        if self.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
        set_seed(cfg.seed)  # same adapter initialisation on every process

        # Everything that can fail cheaply fails before the (for FLUX, minute-long) model load.
        if self.dataset is None:
            self.dataset = open_dataset(cfg.data, cfg.data_format)
        if cfg.task_shares:
            self.dataset = TaskShareDataset(self.dataset, cfg.task_shares)
        self.resume_from = ckpt.resolve_resume(cfg.checkpoint_dir, cfg.resume)
        if self.resume_from is not None:
            self._check_signature(self.resume_from)
        self.init_file = None  # the adapter file a fresh run starts from (a checkpoint holds newer weights)
        if cfg.init_adapter is not None and self.resume_from is None:
            from ..adapters.lora import resolve_adapter_file

            self.init_file = resolve_adapter_file(cfg.init_adapter, local_files_only=True)
        self.thesaurus = load_thesaurus(cfg.synonyms) if cfg.synonym_swap > 0 else None
        if self.pipe is None:
            from ..cli_options import is_builtin_base
            from ..loading import load_fill_pipeline

            builtin = is_builtin_base(str(cfg.base))
            if not builtin:
                _check_resolution(cfg.resolution, _vae_multiple(cfg.base))
            # The built-in model is loaded bare (adapter "none") and brings its own text encoder (MiniLM).
            model = load_fill_pipeline(
                cfg.base, adapter="none" if builtin else None, device="cpu", dtype=self.weight_dtype
            )
            self.pipe = model.pipe
            if builtin and self.encoder is None:
                self.encoder = model.encoder
        pipe = self.pipe
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False).eval()
        pipe.to(acc.device)
        if hasattr(self.encoder, "to"):  # the built-in MiniLM is not a pipeline component: it moves on its own
            self.encoder.to(acc.device)
        if self.encoder is None:
            from ..encoders import FluxPromptEncoder

            self.encoder = FluxPromptEncoder(
                pipe, max_sequence_length=cfg.max_sequence_length, cache_size=cfg.text_cache_size
            )
        if cfg.objective == "locate":
            from .locate import LocatorObjective

            self.objective = LocatorObjective(pipe, positive_weight=cfg.locate_positive_weight)
        else:
            self.objective = FlowMatchingObjective(
                pipe,
                loss_region=cfg.loss_region,
                loss_weighting=cfg.loss_weighting,
                edit_weight=cfg.edit_weight,
                timestep_shift=cfg.timestep_shift,
                masked_content=cfg.masked_content,
                pixel_loss_weight=cfg.pixel_loss_weight,
            )
        _check_resolution(cfg.resolution, self.objective.pixel_multiple)
        self.latent_cache = None
        if cfg.cache_dir:
            from .cache import CachedPromptEncoder, LatentCache, prompt_encoder_fingerprint

            self.latent_cache = LatentCache(cfg.cache_dir, pipe.vae)
            fingerprint = prompt_encoder_fingerprint(self.encoder)
            self.encoder = CachedPromptEncoder(self.encoder, cfg.cache_dir, fingerprint, device=acc.device)
        self._setup_data()
        self._setup_model()

    def _setup_data(self) -> None:
        cfg, acc = self.config, self.accelerator
        panel = PanelSize(*cfg.resolution)
        buckets = None
        if cfg.bucketing:
            buckets = panel_buckets(cfg.resolution, cfg.bucket_aspects, self.objective.pixel_multiple)
        self.stream = BatchStream(
            self.dataset,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            panel=None if buckets else panel,
            buckets=buckets,
            template=cfg.template,
            prompt_dropout=cfg.prompt_dropout,
            thesaurus=self.thesaurus,
            synonym_swap=cfg.synonym_swap,
            request_frames=cfg.request_frames,
            word_dropout=cfg.word_dropout,
            rank=acc.process_index,
            world_size=acc.num_processes,
            edit_masks=cfg.loss_weighting == "edit" or cfg.objective == "locate" or cfg.pixel_loss_weight > 0,
            right_panel="source" if cfg.objective == "locate" else "target",  # a locator never sees the target
            fill_region=cfg.fill_region,
            token=self.objective.pixel_multiple,
            region_jitter=cfg.region_jitter,
        )
        # Decided the same way on every process: validation ends in a barrier all of them must reach.
        self._validating = self.validation is not None or cfg.num_validation > 0
        if self.validation is None and cfg.num_validation > 0 and self.is_main:
            source = open_dataset(cfg.validation_data, "auto") if cfg.validation_data else self.dataset
            self.validation = first_samples(source, cfg.num_validation)

    def _setup_model(self) -> None:
        cfg, acc = self.config, self.accelerator
        transformer = self.pipe.transformer
        if cfg.adapter == "lora":
            add_lora(transformer, cfg)
            if cfg.objective == "locate":
                from .locate import attach_head

                attach_head(transformer)
        else:
            add_moe(transformer, cfg)
            from ..adapters.moe import set_collect_stats

            set_collect_stats(transformer, True)
        self.task_embedding = None
        if cfg.task_embedding:  # before collecting parameters: its vectors train, checkpoint and resume too
            from ..conditioning.task_embedding import TaskEmbedding, attach_task_embedding

            self.task_embedding = attach_task_embedding(transformer, TaskEmbedding.for_transformer(transformer))
        if self.init_file is not None:
            self._init_from_adapter(transformer, self.init_file)
        params = trainable_parameters(transformer)
        for p in params.values():  # adapters train in fp32 even when the frozen base is bf16
            p.data = p.data.float()
        self.param_names = list(params)
        if cfg.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        if cfg.compile:
            # diffusers' regional compilation: each repeated block class compiles once, adapters included
            transformer.compile_repeated_blocks()
        transformer.train()
        self.guidance_embeds = bool(transformer.config.guidance_embeds)

        self.optimizer = self._make_optimizer(list(params.values()))
        from diffusers.optimization import get_scheduler

        self.scheduler = get_scheduler(
            cfg.lr_scheduler,
            self.optimizer,
            num_warmup_steps=cfg.warmup_steps,
            num_training_steps=cfg.max_steps,
        )
        self.model = acc.prepare_model(transformer)
        self.ema: dict[str, torch.Tensor] | None = None
        if cfg.ema_decay is not None:
            self.ema = {n: p.detach().float().clone() for n, p in params.items()}

    def _init_from_adapter(self, transformer: torch.nn.Module, path: Path) -> None:
        """The adapter's (and task vectors') starting weights from the `init_adapter` file (train/adapters.py)."""
        init_adapter_weights(transformer, self.config, path)
        message = f"adapter initialised from {path}"
        if self.task_embedding is not None:
            from ..conditioning.task_embedding import find_task_embedding, load_task_embedding

            found = find_task_embedding(path)
            if found is None:
                message += "; no task embedding beside it: the task vectors start afresh"
            else:
                saved = load_task_embedding(found)
                if saved.names != self.task_embedding.names or saved.dim != self.task_embedding.dim:
                    raise ConfigError(f"task embedding {found} has other tasks or width than this run's")
                with torch.no_grad():
                    self.task_embedding.table.weight.copy_(saved.table.weight)
                message += f" and its task vectors from {found}"
        logger.info(message)

    def _make_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=cfg.learning_rate, betas=cfg.betas, weight_decay=cfg.weight_decay)
        try:
            from prodigyopt import Prodigy
        except ImportError as err:
            raise ConfigError(
                "the Prodigy optimizer needs `pip install prodigyopt` (or use --optimizer adamw)"
            ) from err
        return Prodigy(
            params,
            lr=cfg.learning_rate,
            betas=cfg.betas,
            weight_decay=cfg.weight_decay,
            safeguard_warmup=True,
            use_bias_correction=True,
        )

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    # ================================================================== training
    def train(self, *, stop_at: int | None = None) -> TrainResult:
        """Train to `config.max_steps` (or stop after step `stop_at`, saving a checkpoint, as if interrupted).

        Resumes from the output folder's latest checkpoint unless `config.resume` is False.
        """
        if hasattr(self, "accelerator"):
            raise RuntimeError("a Trainer trains once; make a new Trainer (it resumes from the checkpoints)")
        self._setup()
        cfg, acc = self.config, self.accelerator
        resume_from = self.resume_from
        if resume_from is not None:
            self._load_checkpoint(resume_from)
        self._metrics = MetricsLog(self.output, enabled=self.is_main, tensorboard=cfg.tensorboard)
        self._metrics.truncate_after(self.step)
        if self.is_main:
            write_yaml(cfg, self.output / "config.yaml")
            if resume_from is not None:
                logger.info("resumed from %s at step %d", resume_from, self.step)
        end = cfg.max_steps if stop_at is None else min(cfg.max_steps, stop_at)
        progress = _progress(self.step, cfg.max_steps, enabled=self.is_main and self.show_progress)
        losses: list[float] = []
        last_saved: Path | None = resume_from
        global_batch = cfg.batch_size * cfg.grad_accum * acc.num_processes
        while self.step < end:
            started = time.perf_counter()
            record = self._train_step()
            self.step += 1
            losses.append(record["loss"])
            elapsed = time.perf_counter() - started
            record.update(step=self.step, epoch=self.stream.epoch, samples_per_s=global_batch / max(elapsed, 1e-9))
            if self.step % cfg.log_every == 0 or self.step == end:
                self._log(record)
            progress.update(1)
            progress.set_postfix(loss=f"{record['loss']:.4f}", s_per_step=f"{elapsed:.2f}")
            done = self.step == end
            if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or done:
                last_saved = self.save_checkpoint()
            if self._validating and ((cfg.validate_every and self.step % cfg.validate_every == 0) or done):
                self.validate()
        progress.close()
        adapter = None
        if self.step >= cfg.max_steps:
            adapter = self._export_final()
        acc.wait_for_everyone()
        self._metrics.close()
        return TrainResult(self.step, adapter, last_saved, losses)

    def _train_step(self) -> dict[str, Any]:
        cfg, acc = self.config, self.accelerator
        total = torch.zeros((), device=acc.device)
        balance_total = torch.zeros((), device=acc.device)
        for micro in range(cfg.grad_accum):
            batch = self.stream.next_batch()
            sync = micro == cfg.grad_accum - 1
            context = contextlib.nullcontext() if sync else acc.no_sync(self.model)
            with context:
                loss, balance = self._micro_step(batch)
                acc.backward((loss + cfg.balance_loss_weight * balance) / cfg.grad_accum)
            total += loss.detach() / cfg.grad_accum
            balance_total += balance.detach() / cfg.grad_accum
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
        grad_norm = acc.clip_grad_norm_(params, max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self._update_ema()
        loss_mean = acc.reduce(total, reduction="mean")
        record: dict[str, Any] = {
            "loss": float(loss_mean),
            "lr": float(self.scheduler.get_last_lr()[0]),
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
        }
        group = self.optimizer.param_groups[0]
        if "d" in group:  # Prodigy's estimate of the step size: the effective lr is d * lr
            record["prodigy_d"] = float(group["d"])
        if cfg.adapter == "moe" and cfg.balance_loss_weight > 0:
            record["balance_loss"] = float(acc.reduce(balance_total, reduction="mean"))
        return record

    def _micro_step(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        acc = self.accelerator
        generators = [torch.Generator("cpu").manual_seed(item.seed) for item in batch]
        encoded = self.objective.encode(
            [item.canvas for item in batch],
            [item.fill_mask for item in batch],
            generators,
            device=acc.device,
            dtype=self.weight_dtype,
            cache=self.latent_cache,
            edit_masks=[item.edit_mask for item in batch] if self.stream.edit_masks else None,
        )
        embeds, pooled = self.encoder.encode([item.prompt for item in batch])
        if self.config.text_noise > 0:  # its own generators: the latent noise stays what it is without it
            text_generators = [torch.Generator("cpu").manual_seed(item.seed ^ TEXT_NOISE_SEED) for item in batch]
            embeds = noisy_states(embeds, self.config.text_noise, text_generators)
        with acc.autocast(), self._task_context(batch):
            loss = self.objective.loss(
                self.model, encoded, embeds, pooled, generators, guidance_embeds=self.guidance_embeds
            )
        balance = torch.zeros((), device=loss.device)
        if self.config.adapter == "moe" and self.config.balance_loss_weight > 0:
            from ..adapters.moe import moe_balance_loss

            balance = moe_balance_loss(self.unwrapped).float()
        return loss, balance

    def _task_context(self, batch):
        """Task conditioning of a batch (each sample's task label in the taxonomy; none: no vector)."""
        if self.task_embedding is None:
            return contextlib.nullcontext()
        from ..conditioning.task_embedding import task_conditioning, taxonomy_task

        return task_conditioning(self.unwrapped, self.task_embedding, [taxonomy_task(item.task) for item in batch])

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.config.ema_decay
        assert self.ema is not None and decay is not None
        for name, p in trainable_parameters(self.unwrapped).items():
            self.ema[name].mul_(decay).add_(p.detach().float(), alpha=1 - decay)

    # ================================================================== logging
    def _log(self, record: dict[str, Any]) -> None:
        acc = self.accelerator
        skipped = torch.tensor(float(self.stream.skipped_total), device=acc.device)
        record["skipped"] = int(acc.reduce(skipped, reduction="sum").item())
        if self.config.adapter == "moe":
            record.update(self._routing_record())
        if self.latent_cache is not None:
            store = self.latent_cache.store
            record["cache_hit_rate"] = round(store.hits / max(1, store.hits + store.misses), 4)
        self._metrics.write(record)

    def _routing_record(self) -> dict[str, Any]:
        from ..adapters.moe import reset_routing_stats, routing_stats

        stats = routing_stats(self.unwrapped)
        if not stats:
            return {}
        counts = torch.tensor(list(stats.values()), dtype=torch.float32, device=self.accelerator.device)
        counts = self.accelerator.reduce(counts, reduction="sum")
        reset_routing_stats(self.unwrapped)
        shares = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
        return {
            "expert_usage": [round(float(v), 6) for v in shares.mean(0)],
            "expert_usage_min": float(shares.min()),
            "expert_usage_max": float(shares.max()),
        }

    # ================================================================== checkpoints
    def save_checkpoint(self) -> Path | None:
        """Write `checkpoints/ckpt-<step>/` atomically; returns its path (None on other processes)."""
        acc, root = self.accelerator, self.config.checkpoint_dir
        self._flush_cache()
        tmp = root / f"ckpt-{self.step}.tmp"
        if self.is_main:
            ckpt.begin(root, self.step)
        acc.wait_for_everyone()
        rank = acc.process_index
        ckpt.save_state(tmp, f"rng-{rank}", ckpt.rng_state())
        ckpt.write_json(tmp / f"data-{rank}.json", self.stream.state_dict())
        acc.wait_for_everyone()
        final = None
        if self.is_main:
            model = self.unwrapped
            params = trainable_parameters(model)
            ckpt.save_tensors(tmp / "trainable.safetensors", {n: p for n, p in params.items()})
            ckpt.save_state(tmp, "optimizer", self._raw_optimizer().state_dict())
            ckpt.save_state(tmp, "scheduler", self.scheduler.state_dict())
            if self.ema is not None:
                ckpt.save_tensors(tmp / "ema.safetensors", self.ema)
            self._export(model, tmp)
            meta = {
                "step": self.step,
                "world_size": acc.num_processes,
                "signature": self.config.adapter_signature(),
                "param_names": self.param_names,
            }
            final = ckpt.commit(tmp, meta)
            ckpt.prune(root, self.config.keep_checkpoints)
        acc.wait_for_everyone()
        return final

    def _flush_cache(self) -> None:
        """Write the encodings cached since the last flush (each process its own shards)."""
        if self.latent_cache is not None:
            self.latent_cache.flush()
            self.encoder.flush()

    def _raw_optimizer(self) -> torch.optim.Optimizer:
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def _load_checkpoint(self, folder: Path) -> None:
        acc = self.accelerator
        meta = self._check_signature(folder)
        params = trainable_parameters(self.unwrapped)
        saved = ckpt.load_tensors(folder / "trainable.safetensors")
        missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
        if missing or unexpected:
            raise ckpt.CheckpointError(
                f"checkpoint {folder} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name].to(p.device, p.dtype))
        self._raw_optimizer().load_state_dict(ckpt.load_state(folder, "optimizer"))
        self.scheduler.load_state_dict(ckpt.load_state(folder, "scheduler"))
        if self.ema is not None:
            ema_file = folder / "ema.safetensors"
            if ema_file.is_file():
                self.ema = {k: v.to(acc.device) for k, v in ckpt.load_tensors(ema_file).items()}
            else:
                logger.warning("checkpoint %s has no EMA weights; the EMA restarts from the current weights", folder)
        self.step = int(meta["step"])
        rank, world = acc.process_index, acc.num_processes
        if int(meta["world_size"]) == world:
            self.stream.load_state_dict(ckpt.read_json(folder / f"data-{rank}.json"))
            ckpt.set_rng_state(ckpt.load_state(folder, f"rng-{rank}"))
        else:
            self._approximate_position(folder, int(meta["world_size"]))

    def _check_signature(self, folder: Path) -> dict[str, Any]:
        meta = ckpt.read_json(folder / ckpt.COMPLETE_MARKER)
        signature = self.config.adapter_signature()
        if meta.get("signature") != signature:
            raise ckpt.CheckpointError(
                f"checkpoint {folder} was trained with {meta.get('signature')}, but this run asks for "
                f"{signature}; use the same adapter options or another --output"
            )
        return meta

    def _approximate_position(self, folder: Path, saved_world: int) -> None:
        logger.warning(
            "checkpoint %s was written by %d processes, this run has %d: the data order continues from "
            "about the same position, but the run is not bit-identical to an uninterrupted one",
            folder,
            saved_world,
            self.accelerator.num_processes,
        )
        state = ckpt.read_json(folder / "data-0.json")
        consumed = int(state["lane"]) * saved_world
        self.stream.epoch = int(state["epoch"])
        self.stream.lane = math.ceil(consumed / self.accelerator.num_processes)
        self.stream.samples = int(state.get("samples", 0))

    def _export_final(self) -> Path | None:
        """The adapter (EMA weights if enabled) in the output folder, where `diptych edit --lora OUT` finds it."""
        if not self.is_main:
            return None
        model = self.unwrapped
        if self.ema is None:
            return self._export(model, self.output)
        params = trainable_parameters(model)
        backup = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.ema[name].to(p.dtype))
            try:
                return self._export(model, self.output)
            finally:
                for name, p in params.items():
                    p.copy_(backup[name])

    def _export(self, model: torch.nn.Module, folder: Path) -> Path:
        """The adapter file in `folder` (a locator's file for objective "locate"), plus
        `task_embedding.safetensors` when task vectors are trained."""
        if self.config.objective == "locate":
            from .locate import export_locator

            return export_locator(model, folder)
        path = export_adapter(model, self.config, folder)
        if self.task_embedding is not None:
            from ..conditioning.task_embedding import TASK_EMBEDDING_FILE, save_task_embedding

            save_task_embedding(self.task_embedding, folder / TASK_EMBEDDING_FILE)
        return path

    # ================================================================== validation
    @torch.no_grad()
    def validate(self) -> Path | None:
        """Edit the validation samples with the current adapter; write a grid PNG (source | target | edit)."""
        acc, cfg = self.accelerator, self.config
        path = None
        if self.is_main and self.validation and cfg.objective == "locate":
            path = save_image_atomic(self._locator_grid(), self.output / "validation" / f"step-{self.step:07d}.png")
        elif self.is_main and self.validation:
            from ..editor import Editor, EditRequest

            model = self.unwrapped
            model.eval()
            collect = cfg.adapter == "moe"
            if collect:
                from ..adapters.moe import set_collect_stats

                set_collect_stats(model, False)
            try:
                editor = Editor(
                    self.pipe, encoder=self.encoder, fill_region=cfg.fill_region, masked_content=cfg.masked_content
                )
                editor.default_width = cfg.resolution[0]
                requests = [
                    EditRequest(s.source, s.instruction, cfg.seed + i, self._validation_mask(s))
                    for i, s in enumerate(self.validation)
                ]
                with acc.autocast():
                    edits = editor.edit_many(
                        requests, steps=cfg.validation_steps, guidance=cfg.validation_guidance, template=cfg.template
                    )
            finally:
                model.train()
                if collect:
                    set_collect_stats(model, True)
            grid = validation_grid(self.validation, edits)
            path = save_image_atomic(grid, self.output / "validation" / f"step-{self.step:07d}.png")
        acc.wait_for_everyone()
        return path

    def _validation_mask(self, sample) -> Image.Image | None:
        """The region a validation edit fills: the sample's own edit mask for a `fill_region: edit` adapter (what
        a perfect locator would give), none (the whole panel) otherwise."""
        if self.config.fill_region == "panel":
            return None
        return crop_right(edit_mask_canvas(sample, PanelSize(*sample.source.size)))

    def _locator_grid(self) -> Image.Image:
        """Validation of a locator: source | target | the region it predicts (white), one row per sample."""
        from ..editor import Editor, EditRequest
        from ..locator import Locator, region_mask
        from .locate import HEAD_ATTRIBUTE

        model = self.unwrapped
        editor = Editor(self.pipe, encoder=self.encoder)
        editor.default_width = self.config.resolution[0]
        locator = Locator(model, getattr(model, HEAD_ATTRIBUTE))
        masks = []
        model.eval()
        try:
            for sample in self.validation:  # one at a time: samples may differ in size
                item = editor.prepare(EditRequest(sample.source, sample.instruction), template=self.config.template)
                embeds, pooled = self.encoder.encode([item.prompt])
                with self.accelerator.autocast():
                    probabilities = locator.probabilities(self.pipe, [item.canvas], [item.fill_mask], embeds, pooled)
                masks.append(region_mask(probabilities[0], item.panel_source.size).convert("RGB"))
        finally:
            model.train()
        return validation_grid(self.validation, masks)


def _vae_multiple(base: str) -> int | None:
    """Pixels per packed token of the base model (16 for FLUX), from its VAE config; None if unreadable
    (the model load that follows then reports the problem)."""
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.load_config(base, subfolder="vae")
    except Exception:
        return None
    return 2 * 2 ** (len(vae["block_out_channels"]) - 1)


def _check_resolution(resolution: tuple[int, int], multiple: int | None) -> None:
    width, height = resolution
    if multiple and (width % multiple or height % multiple):
        w, h = (max(multiple, round(v / multiple) * multiple) for v in (width, height))
        raise ConfigError(
            f"resolution {width}x{height}: both sides must be multiples of {multiple} for this model; try {w}x{h}"
        )


def _check_strategy(accelerator) -> None:
    """Refuse sharded strategies: adapter export, optimizer state and validation here assume every process
    holds the whole (frozen) model, as with DDP."""
    from accelerate.utils import DistributedType

    sharded = {DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM}
    if accelerator.distributed_type in sharded:
        raise ConfigError(
            f"diptych train runs on one device or with DDP (accelerate launch --multi_gpu), not with "
            f"{accelerator.distributed_type.value}: the adapter is small and the frozen base is replicated. "
            "To save memory use --gradient-checkpointing, bf16 and --batch-size 1 with --grad-accum"
        )


def _accelerator(factory, **kwargs):
    """An Accelerator; in a single process, one whose settings differ from an earlier one (accelerate keeps
    global state) replaces it instead of failing, so several runs can share a Python session."""
    try:
        return factory(**kwargs)
    except ValueError as err:
        from accelerate.state import AcceleratorState, PartialState

        if "already been initialized" not in str(err) or PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return factory(**kwargs)


def validation_grid(samples: list[EditSample], edits: list[Image.Image]) -> Image.Image:
    """One row per sample: source | ground-truth target | edit, each at the edit's size."""
    width, height = max(e.width for e in edits), max(e.height for e in edits)
    grid = Image.new("RGB", (3 * width, height * len(edits)), "white")
    for row, (sample, edit) in enumerate(zip(samples, edits, strict=True)):
        for col, image in enumerate((sample.source, sample.target, edit)):
            grid.paste(image.resize(edit.size, Image.Resampling.BICUBIC), (col * width, row * height))
    return grid


class MetricsLog:
    """`metrics.jsonl` (one JSON object per logged step) plus TensorBoard scalars when it is installed."""

    def __init__(self, folder: Path, *, enabled: bool, tensorboard: bool = True):
        self.path = folder / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("TensorBoard is not installed; metrics go to %s only", self.path)
            else:
                self.writer = SummaryWriter(str(folder / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (left by a run that went further than its last checkpoint)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        write_atomic(self.path, "".join(f"{line}\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key not in ("step", "time"):
                    self.writer.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _progress(initial: int, total: int, *, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", desc="training", dynamic_ncols=True)


def train(config: TrainConfig, **kwargs: Any) -> TrainResult:
    """Run `Trainer(config, **kwargs).train()`."""
    return Trainer(config, **kwargs).train()
