"""Training configuration: one flat dataclass, loadable from YAML, with the official ICEdit recipe as defaults
(rank 32, alpha 32, 4 experts, top-1, Prodigy at lr 1 with weight decay 0.01, clip 0.5, 512 x 512
panels, 10% prompt dropout)."""

from __future__ import annotations

import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..canvas import FILL_REGIONS, MASKED_CONTENTS
from ..errors import DiptychError
from ..files import write_atomic
from .data import FORMATS, share_fraction

ADAPTERS = ("lora", "moe")
OPTIMIZERS = ("prodigy", "adamw")
PRECISIONS = ("auto", "fp32", "bf16")
SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
DEFAULT_LR = {"prodigy": 1.0, "adamw": 1e-4}
DEFAULT_BUCKET_ASPECTS = (0.5, 2 / 3, 0.75, 1.0, 4 / 3, 1.5, 2.0)
_FLOAT_FIELDS = (
    "alpha",
    "lr",
    "weight_decay",
    "max_grad_norm",
    "balance_loss_weight",
    "ema_decay",
    "prompt_dropout",
    "synonym_swap",
    "request_frames",
    "word_dropout",
    "text_noise",
    "region_jitter",
    "validation_guidance",
    "edit_weight",
    "timestep_shift",
    "pixel_loss_weight",
    "locate_positive_weight",
)
OBJECTIVES = ("flow", "locate")


class ConfigError(DiptychError, ValueError):
    """A training option is missing, unknown or out of range."""


@dataclass
class TrainConfig:
    """Everything a training run needs. `lr=None` means the optimizer's default (Prodigy 1.0, AdamW 1e-4).

    `resolution` is the panel (width, height); the canvas is (2 * width, height). `resume`: None resumes
    from the output folder's latest checkpoint if there is one, True requires one, False starts afresh
    (and refuses a folder that already holds checkpoints). `checkpoint_every=0` saves only at the end;
    `validate_every=0` validates only at the end (when `num_validation` > 0). `resume` may also be the
    path of a checkpoint folder to resume from.
    """

    base: str = ""
    data: str = ""
    output: str = ""
    max_steps: int = 1000
    data_format: str = "auto"
    # "flow": an edit adapter (the ICEdit objective); "locate": a locator (LoRA + per-token head, locate.py)
    objective: str = "flow"
    locate_positive_weight: float = 4.0  # BCE weight of in-region tokens (a recolor's region is ~7% of them)
    # adapter
    adapter: str = "lora"
    rank: int = 32
    alpha: float = 32.0
    lora_targets: list[str] | None = None  # None: the official targets
    num_experts: int = 4
    top_k: int = 1
    gate: str = "official"
    dispatch: str = "dense"
    balance_loss_weight: float = 0.0  # > 0 adds the Switch-Transformer load-balancing loss
    task_embedding: bool = False  # Emu Edit: also learn one vector per task (diptych.emu.task_embedding)
    # start the adapter (and its task vectors) from this exported adapter, a file or a run folder, instead of a fresh
    # initialisation; a resumed checkpoint takes precedence
    init_adapter: str | None = None
    train_norms: bool = False  # also train the attention q/k RMSNorm gains (adapters.QK_NORMS), saved in the adapter
    # optimisation
    optimizer: str = "prodigy"
    lr: float | None = None
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    max_grad_norm: float = 0.5
    batch_size: int = 1
    grad_accum: int = 1
    ema_decay: float | None = None
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the repeated transformer blocks (diffusers' regional compilation)
    mixed_precision: str = "auto"
    # objective and data
    resolution: tuple[int, int] = (512, 512)
    bucketing: bool = False
    bucket_aspects: list[float] = field(default_factory=lambda: list(DEFAULT_BUCKET_ASPECTS))
    prompt_dropout: float = 0.1
    synonyms: str | None = None  # thesaurus JSON of the dataset's words and their synonyms (thesaurus.py)
    synonym_swap: float = 0.0  # probability that each word the thesaurus lists is swapped for a synonym
    request_frames: float = 0.0  # share of instructions wrapped in a request frame, "can you ...?" (paraphrase.py)
    word_dropout: float = 0.0  # probability that each word of an instruction is left out (paraphrase.py)
    text_noise: float = 0.0  # Gaussian noise on the prompt's token states, times their RMS (paraphrase.py)
    template: str | None = None
    loss_region: str = "all"
    loss_weighting: str = "none"  # "edit": tokens weighted by the sample's edit mask (objective.py)
    # "panel": the whole right panel is filled (official); "edit": only the sample's edit region (whole tokens,
    # half a token of margin), the source showing around it: an adapter for located edits (`mask="auto"`)
    fill_region: str = "panel"
    # share of "edit" regions grown by 1-3 bordering tokens (train/stream.py), as a locator's region often is
    region_jitter: float = 0.0
    # what the Fill condition shows under the mask: "zero" (FLUX.1 Fill) or "source" (the old content stays
    # visible token by token, as InstructPix2Pix concatenates the source; sampler.masked_canvas)
    masked_content: str = "zero"
    edit_weight: float = 10.0  # weight of a fully edited token under loss_weighting "edit"
    timestep_shift: float = 1.0  # > 1 samples training times toward high noise (t -> s t / (1 + (s - 1) t))
    # > 0 adds the decoded x0 prediction's mean absolute pixel error over the edit, times this (objective.py)
    pixel_loss_weight: float = 0.0
    # task -> share of its rows kept (0-1, e.g. "1/3"), to thin tasks already learnt (data.TaskShareDataset)
    task_shares: dict[str, Any] | None = None
    cache_dir: str | None = None  # frozen encodings (VAE posteriors, prompt embeddings) cached here (cache.py)
    max_sequence_length: int = 512
    text_cache_size: int = 256  # prompts kept encoded (FLUX: ~4 MB each in bf16 at 512 tokens)
    # bookkeeping
    seed: int = 42
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    validate_every: int = 500
    num_validation: int = 4
    validation_data: str | None = None
    validation_steps: int = 20
    validation_guidance: float = 50.0
    log_every: int = 1
    resume: bool | str | None = None  # a str is the path of a checkpoint folder
    cpu: bool = False
    tensorboard: bool = True

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self, *, require_paths: bool = False) -> TrainConfig:
        """Check every field; raise `ConfigError` naming the field, the value and what is allowed."""
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
                try:
                    setattr(self, name, float(value))
                except ValueError:
                    raise ConfigError(f"{name} must be a number, got {value!r}") from None
        if isinstance(self.resolution, int | str):
            self.resolution = parse_resolution(self.resolution)
        self.resolution = tuple(int(v) for v in self.resolution)  # type: ignore[assignment]
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        _choice(self, "adapter", ADAPTERS)
        _choice(self, "objective", OBJECTIVES)
        _choice(self, "optimizer", OPTIMIZERS)
        _choice(self, "mixed_precision", PRECISIONS)
        _choice(self, "lr_scheduler", SCHEDULERS)
        _choice(self, "data_format", FORMATS)
        _choice(self, "gate", ("official", "learned"))
        _choice(self, "dispatch", ("dense", "sparse"))
        _choice(self, "loss_region", ("all", "right"))
        _choice(self, "loss_weighting", ("none", "edit"))
        _choice(self, "fill_region", FILL_REGIONS)
        _choice(self, "masked_content", MASKED_CONTENTS)
        if self.objective == "locate" and (self.fill_region, self.masked_content) != ("panel", "zero"):
            raise ConfigError(
                "a locator reads the canvas the editor builds: use fill_region 'panel' and masked_content 'zero' "
                "with objective 'locate'"
            )
        if self.objective == "locate" and (self.adapter != "lora" or self.task_embedding):
            raise ConfigError(
                "objective 'locate' trains a plain LoRA and its head: use adapter lora without task_embedding"
            )
        for name in ("edit_weight", "timestep_shift", "locate_positive_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if self.edit_weight < 1:
            raise ConfigError(f"edit_weight must be at least 1 (1 = no weighting), got {self.edit_weight}")
        if not isinstance(self.compile, bool):
            raise ConfigError(f"compile must be true or false, got {self.compile!r}")
        if not isinstance(self.task_embedding, bool):
            raise ConfigError(f"task_embedding must be true or false, got {self.task_embedding!r}")
        for name in ("max_steps", "rank", "num_experts", "top_k", "batch_size", "grad_accum", "log_every"):
            _positive_int(self, name)
        for name in ("warmup_steps", "checkpoint_every", "validate_every", "num_validation", "seed"):
            _non_negative_int(self, name)
        for name in ("keep_checkpoints", "validation_steps", "max_sequence_length", "text_cache_size"):
            _positive_int(self, name)
        if self.top_k > self.num_experts:
            raise ConfigError(f"top_k={self.top_k} is more than num_experts={self.num_experts}")
        for name in (
            "alpha",
            "weight_decay",
            "max_grad_norm",
            "balance_loss_weight",
            "validation_guidance",
            "pixel_loss_weight",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{name} must be a non-negative number, got {value!r}")
        if self.task_shares is not None:
            if not isinstance(self.task_shares, dict) or not self.task_shares:
                raise ConfigError(
                    f"task_shares must map tasks to shares, e.g. {{mirror: 1/3}}, got {self.task_shares!r}"
                )
            for task, share in self.task_shares.items():
                try:
                    share_fraction(share)
                except ValueError as err:
                    raise ConfigError(f"task_shares[{task!r}]: {err}") from None
        if self.pixel_loss_weight > 0 and self.objective == "locate":
            raise ConfigError("pixel_loss_weight is a loss of the flow objective: leave it 0 with objective 'locate'")
        if self.alpha == 0:
            raise ConfigError("alpha must be positive (the LoRA scaling is alpha / rank)")
        if self.lr is not None and (isinstance(self.lr, bool) or not self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if not 0.0 <= self.prompt_dropout <= 1.0:
            raise ConfigError(f"prompt_dropout must be between 0 and 1, got {self.prompt_dropout}")
        if not 0.0 <= self.request_frames <= 1.0:
            raise ConfigError(f"request_frames must be between 0 and 1, got {self.request_frames}")
        if not 0.0 <= self.synonym_swap <= 1.0:
            raise ConfigError(f"synonym_swap must be between 0 and 1, got {self.synonym_swap}")
        if self.synonym_swap > 0 and not self.synonyms:
            raise ConfigError("synonym_swap needs a thesaurus: set synonyms (e.g. examples/shapes/thesaurus.json)")
        if not 0.0 <= self.word_dropout < 1.0:
            raise ConfigError(f"word_dropout must be at least 0 and below 1 (e.g. 0.1), got {self.word_dropout}")
        if not 0.0 <= self.region_jitter <= 1.0:
            raise ConfigError(f"region_jitter must be between 0 and 1, got {self.region_jitter}")
        if self.region_jitter > 0 and self.fill_region != "edit":
            raise ConfigError("region_jitter grows the edit's region: it needs fill_region 'edit'")
        if self.text_noise < 0:
            raise ConfigError(f"text_noise must be 0 or more (e.g. 0.1), got {self.text_noise}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be between 0 and 1 (e.g. 0.999), got {self.ema_decay}")
        if len(self.resolution) != 2 or min(self.resolution) < 1:
            raise ConfigError(f"resolution must be WIDTH x HEIGHT in pixels, got {self.resolution}")
        if self.bucketing and not self.bucket_aspects:
            raise ConfigError("bucketing needs at least one aspect ratio in bucket_aspects")
        if any(not (isinstance(a, int | float) and a > 0) for a in self.bucket_aspects):
            raise ConfigError(f"bucket_aspects must be positive numbers (width / height), got {self.bucket_aspects}")
        if self.template is not None:
            from ..prompts import resolve_template

            try:
                resolve_template(self.template)
            except DiptychError as err:
                raise ConfigError(str(err)) from err
        if require_paths:
            for name in ("base", "data", "output"):
                if not getattr(self, name):
                    raise ConfigError(f"{name} is required (--{name} on the command line or '{name}:' in the YAML)")
        return self

    # ------------------------------------------------------------------ derived
    @property
    def learning_rate(self) -> float:
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.output) / "checkpoints"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["resolution"] = list(self.resolution)
        data["betas"] = list(self.betas)
        return data

    def adapter_signature(self) -> dict[str, Any]:
        """What must match between a checkpoint and the run resuming it."""
        keys = ["adapter", "rank", "alpha", "lora_targets", "optimizer"]
        for name, default in (("objective", "flow"), ("fill_region", "panel"), ("masked_content", "zero")):
            if getattr(self, name) != default:  # only when not the default, so older checkpoints keep matching
                keys.append(name)
        if self.adapter == "moe":
            keys += ["num_experts", "top_k", "gate"]
        for flag in ("task_embedding", "train_norms"):  # only when on, so older checkpoints keep matching
            if getattr(self, flag):
                keys.append(flag)
        return {k: self.to_dict()[k] for k in keys}


def parse_resolution(value: int | str | list | tuple) -> tuple[int, int]:
    """512 -> (512, 512); "512x384" -> (512, 384) (width x height of one panel)."""
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise ConfigError(f"resolution must have two values (width, height), got {value!r}")
        return int(value[0]), int(value[1])
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    text = str(value).lower().strip()
    try:
        if "x" in text:
            w, h = text.split("x", 1)
            return int(w), int(h)
        return int(text), int(text)
    except ValueError:
        raise ConfigError(f"resolution must be N or WIDTHxHEIGHT (e.g. 512 or 512x384), got {value!r}") from None


def _choice(cfg: TrainConfig, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _positive_int(cfg: TrainConfig, name: str) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _non_negative_int(cfg: TrainConfig, name: str) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The options of a YAML config file (a flat mapping of TrainConfig fields); unknown keys are errors."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{p} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping of options (key: value), got {type(data).__name__}")
    unknown = sorted(set(data) - set(field_names()))
    if unknown:
        raise ConfigError(f"{p}: unknown option(s) {', '.join(unknown)}; known: {', '.join(field_names())}")
    return data


def build_config(yaml_path: str | os.PathLike[str] | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the YAML file, then `overrides` (None values ignored: 'not given')."""
    options: dict[str, Any] = read_yaml(yaml_path) if yaml_path else {}
    options.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(options) - set(field_names()))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}")
    for f in fields(TrainConfig):
        if f.default is MISSING and f.default_factory is MISSING and f.name not in options:  # pragma: no cover
            raise ConfigError(f"{f.name} is required")
    try:
        return TrainConfig(**options)
    except TypeError as err:  # pragma: no cover - names are checked above
        raise ConfigError(str(err)) from err


def write_yaml(config: TrainConfig, path: str | os.PathLike[str]) -> None:
    """Write the resolved config next to the run (atomically), so the run can be repeated."""
    import yaml

    write_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
