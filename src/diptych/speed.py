"""Speed and memory modes, each a thin call into diffusers or torchao.

- caching (`--cache`): diffusers' cache hooks on the transformer (`transformer.enable_cache(...)`):
  `fbcache[:THRESHOLD]` First Block Cache, `taylorseer` TaylorSeer, `magcache[:THRESHOLD]` MagCache (with the
  magnitude ratios diffusers calibrated on FLUX.1 dev), `fastercache` FasterCache. The sampler applies the mode
  (`FillSampler.cache`): it makes the config for each run's number of steps and resets the hooks' state whenever
  the state it steps is not the one it just produced (a new edit, a resumed `FillState`, the early filter's
  winner), so nothing cached for one image or batch is reused for another.
- quantization (`--quantize`): the transformer's linear weights, `int8` (torchao int8 weight-only; runs on a
  CPU), `fp8` (torchao float8 weight-only) and `nf4` (bitsandbytes 4-bit, at load time) need CUDA.
- GGUF (`--gguf FILE`): a single-file transformer quantized by llama.cpp's tools (e.g. a Q8_0 or Q4_K FLUX.1 Fill),
  loaded by diffusers (`from_single_file` + `GGUFQuantizationConfig`); the weights stay quantized and are
  dequantized layer by layer as they run.

Modes that cannot run where asked are refused in one line (`check_quantize`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import InputError

CACHE_MODES: tuple[str, ...] = ("fbcache", "taylorseer", "magcache", "fastercache")
QUANTIZE_MODES: tuple[str, ...] = ("int8", "fp8", "nf4")

_DEFAULT_THRESHOLDS = {"fbcache": 0.05, "magcache": 0.06}  # diffusers' defaults


@dataclass(frozen=True)
class CacheMode:
    """A caching mode and its threshold (for the modes that take one)."""

    name: str
    threshold: float | None = None

    @classmethod
    def parse(cls, spec: str | CacheMode | None) -> CacheMode | None:
        """`fbcache`, `fbcache:0.1`, `taylorseer`, `magcache[:T]`, `fastercache`, or None / "none" for no cache."""
        if spec is None or isinstance(spec, CacheMode):
            return spec
        name, _, value = str(spec).strip().partition(":")
        if name in ("", "none"):
            return None
        if name not in CACHE_MODES:
            raise InputError(
                f"unknown cache mode {spec!r}: use one of {', '.join(CACHE_MODES)} (fbcache:0.1 sets a threshold)"
            )
        if not value:
            return cls(name, _DEFAULT_THRESHOLDS.get(name))
        if name not in _DEFAULT_THRESHOLDS:
            raise InputError(f"cache mode {name} takes no threshold, got {spec!r}")
        try:
            threshold = float(value)
        except ValueError:
            threshold = -1.0
        if not 0 < threshold < 10:
            raise InputError(f"the cache threshold must be a positive number such as 0.05, got {value!r}")
        return cls(name, threshold)

    def __str__(self) -> str:
        return self.name if self.threshold is None else f"{self.name}:{self.threshold:g}"

    def config(self, *, steps: int, current_timestep: Callable[[], float]) -> Any:
        """The diffusers cache config for a run of `steps` steps (`current_timestep()`: 0..1000, for FasterCache)."""
        if self.name == "fbcache":
            from diffusers import FirstBlockCacheConfig

            return FirstBlockCacheConfig(threshold=self.threshold)
        if self.name == "taylorseer":
            from diffusers import TaylorSeerCacheConfig

            return TaylorSeerCacheConfig(taylor_factors_dtype=None)  # the model's dtype: fp32 on a CPU
        if self.name == "magcache":
            from diffusers import MagCacheConfig
            from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

            return MagCacheConfig(threshold=self.threshold, num_inference_steps=steps, mag_ratios=FLUX_MAG_RATIOS)
        from diffusers import FasterCacheConfig

        # FLUX is guidance-distilled: no unconditional batch, only attention reuse across steps.
        return FasterCacheConfig(
            spatial_attention_block_skip_range=2,
            current_timestep_callback=current_timestep,
            is_guidance_distilled=True,
        )


def check_quantize(mode: str | None, device_type: str) -> None:
    """Refuse, in one line, a quantization mode that does not exist or cannot run on `device_type`."""
    if mode is None:
        return
    if mode not in QUANTIZE_MODES:
        raise InputError(f"unknown quantization {mode!r}: use one of {', '.join(QUANTIZE_MODES)}")
    if mode in ("fp8", "nf4") and device_type != "cuda":
        raise InputError(f"--quantize {mode} needs a CUDA GPU (its kernels are CUDA-only); on {device_type} use int8")


def quantize_transformer(transformer: Any, mode: str) -> None:
    """Quantize the transformer's base linear weights in place with torchao (`int8` weight-only, or `fp8`
    weight-only on CUDA). Adapter layers (LoRA / LoRA-MoE experts and routers) stay in full precision."""
    import torch

    try:  # (its import-time warnings are quieted in diptych/__init__.py)
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except ImportError as err:
        raise InputError("--quantize int8 / fp8 needs torchao: pip install 'diptych[speed]'") from err

    def is_base_linear(module: torch.nn.Module, name: str) -> bool:
        adapter = any(part in name for part in ("lora_", "experts", "router", "gate"))
        return isinstance(module, torch.nn.Linear) and not adapter

    config = Int8WeightOnlyConfig() if mode == "int8" else Float8WeightOnlyConfig()
    quantize_(transformer, config, filter_fn=is_base_linear)


def weight_bytes(module: Any) -> int:
    """Bytes the module's parameters and buffers take; a quantized tensor (a tensor subclass) is counted by the
    tensors it stores (its int8 data and scales, ...)."""
    return sum(_stored_bytes(t) for t in [*module.parameters(), *module.buffers()])


def _stored_bytes(tensor: Any) -> int:
    import torch

    flatten = getattr(tensor, "__tensor_flatten__", None)
    if type(tensor) in (torch.Tensor, torch.nn.Parameter) or flatten is None:
        return tensor.numel() * tensor.element_size()
    names, _ = flatten()
    return sum(_stored_bytes(getattr(tensor, name)) for name in names)


def load_gguf_transformer(file: str, config: str, *, subfolder: str | None, dtype: Any, local_files_only: bool) -> Any:
    """A FLUX transformer from a GGUF file, its architecture from `config` (a pipeline folder or hub id, with
    `subfolder`); original FLUX checkpoint keys are converted by diffusers, diffusers keys are read as they are."""
    from pathlib import Path

    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig

    from .errors import WeightsError

    if not Path(file).is_file():
        raise InputError(f"GGUF file {file} does not exist; pass the .gguf of a FLUX.1 Fill transformer")
    try:
        import gguf  # noqa: F401  (diffusers reads the file with it)
    except ImportError as err:
        raise InputError("--gguf needs the gguf package: pip install 'diptych[speed]'") from err
    try:
        return FluxTransformer2DModel.from_single_file(
            str(file),
            config=config,
            subfolder=subfolder,
            quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
            torch_dtype=dtype,
            local_files_only=local_files_only,
        ).eval()
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise WeightsError(f"cannot load the GGUF transformer {file}: {err}") from err
