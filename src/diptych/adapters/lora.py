"""Plain LoRA adapters (the official ICEdit "normal" LoRA and anything in diffusers' Flux LoRA format):
finding the weights, checking every key against the model before loading, and loading through peft.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import FluxFillPipeline
from safetensors.torch import load_file

from ..errors import WeightsError

#: FLUX's attention q/k RMSNorms. Queries and keys are normalised before their dot product, so a LoRA on `to_q` /
#: `to_k` turns their directions but cannot scale the logits: the frozen gains cap how sharply a query can pick one
#: key (about 5.7 logits at head dim 32 with gains of 1, too little to pick one word of 48 over 128 image tokens).
#: `diptych train --train-norms` trains them; diffusers stores and loads them in Flux LoRA files (as Flux Control
#: LoRAs ship theirs).
QK_NORMS: tuple[str, ...] = ("norm_q", "norm_k", "norm_added_q", "norm_added_k")
# The attribute of a transformer holding the gains an adapter's norms replaced, by state-dict name.
QK_NORM_ORIGINALS = "_diptych_qk_norm_originals"

ADAPTER_NAME = "edit"
# What an adapter folder's weights are called: diffusers' LoRA name, diptych's LoRA-MoE export (which may sit beside
# a task_embedding.safetensors) and the official ICEdit MoE file.
DEFAULT_WEIGHT_NAMES = ("pytorch_lora_weights.safetensors", "adapter.safetensors", "ICEdit-MoE-LoRA.safetensors")


def resolve_adapter_file(adapter: str | Path, *, local_files_only: bool = False) -> Path:
    """The .safetensors file of an adapter given as a file, a folder holding one, or a hub repo id."""
    path = Path(adapter)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise WeightsError(
                f"adapter {path} is not a .safetensors file; diptych never unpickles weights. "
                "Convert it with safetensors.torch.save_file first"
            )
        return path
    if path.is_dir():
        return _pick_weight_file(path)
    if path.suffix == ".safetensors" or path.is_absolute() or str(adapter).startswith("."):
        raise WeightsError(f"adapter {adapter} does not exist")
    return _download(str(adapter), local_files_only)


def read_adapter_state_dict(adapter: str | Path, *, local_files_only: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of an adapter given as a .safetensors file, a folder holding one, or a hub repo id."""
    return _load(resolve_adapter_file(adapter, local_files_only=local_files_only))


def _load(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise WeightsError(f"adapter {path} is not a readable safetensors file ({err})") from err


def _pick_weight_file(folder: Path) -> Path:
    for name in DEFAULT_WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    files = sorted(folder.glob("*.safetensors"))
    if len(files) == 1:
        return files[0]
    if not files:
        raise WeightsError(f"adapter folder {folder} has no .safetensors file")
    names = ", ".join(f.name for f in files[:5])
    raise WeightsError(f"adapter folder {folder} has several .safetensors files ({names}); pass the file itself")


def check_adapter_hub_access(adapter: str | Path, *, local_files_only: bool = False) -> bool:
    """`diptych.hub.check_hub_access` for an adapter: fails at once when a hub id can be neither downloaded
    nor read from the cache; returns the `local_files_only` to download it with."""
    from ..hub import check_hub_access

    return check_hub_access(
        adapter,
        what="adapter",
        fix=f"download it (`huggingface-cli download {adapter}`) or pass a local .safetensors file or folder",
        local_files_only=local_files_only,
    )


def _download(repo_id: str, local_files_only: bool) -> Path:
    from huggingface_hub import hf_hub_download, list_repo_files

    local_files_only = check_adapter_hub_access(repo_id, local_files_only=local_files_only)
    try:
        if local_files_only:
            errors = []
            for name in DEFAULT_WEIGHT_NAMES:
                try:
                    return Path(hf_hub_download(repo_id, name, local_files_only=True))
                except Exception as err:
                    errors.append(err)
            raise errors[-1]
        names = [n for n in list_repo_files(repo_id) if n.endswith(".safetensors")]
        preferred = [n for n in DEFAULT_WEIGHT_NAMES if n in names] or names
        if not preferred:
            raise WeightsError(f"hub repo {repo_id} has no .safetensors file")
        return Path(hf_hub_download(repo_id, preferred[0]))
    except WeightsError:
        raise
    except Exception as err:
        raise WeightsError(
            f"cannot get adapter {repo_id!r}: not a local file or folder, and the hub copy is not available "
            f"({type(err).__name__}). Download it (huggingface-cli download {repo_id}) or pass a local path"
        ) from err


def qk_norm_parameters(transformer: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The gains of the attention q/k RMSNorms (`QK_NORMS`) by state-dict name."""
    return {
        f"{name}.weight": module.weight
        for name, module in transformer.named_modules()
        if name.rpartition(".")[2] in QK_NORMS and isinstance(getattr(module, "weight", None), torch.nn.Parameter)
    }


def adapter_qk_norms(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The q/k norm gains that belong to an adapter, for its file: those being trained (`--train-norms`) or loaded
    from an adapter file (`load_qk_norms`); detached fp32 copies on the CPU, {} when the adapter has none."""
    loaded = getattr(transformer, QK_NORM_ORIGINALS, {})
    return {
        name: p.detach().to("cpu", torch.float32).contiguous().clone()
        for name, p in qk_norm_parameters(transformer).items()
        if p.requires_grad or name in loaded
    }


def is_qk_norm_key(key: str) -> bool:
    """Whether an adapter-file key names an attention q/k norm gain (`transformer.<block>.attn.norm_q.weight`)."""
    parts = key.split(".")
    return len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in QK_NORMS


def load_qk_norms(transformer: torch.nn.Module, gains: dict[str, torch.Tensor]) -> None:
    """Copy an adapter's q/k norm gains (keys as in its file, any prefix) into the transformer, keeping the
    originals (`restore_qk_norms`); a key naming no norm of this model or a wrong shape raises `WeightsError`."""
    params = qk_norm_parameters(transformer)
    resolved, problems = {}, []
    for key, tensor in gains.items():
        name = key.removeprefix("base_model.model.").removeprefix("transformer.")
        if name not in params:
            problems.append(f"{key}: the model has no attention norm '{name.removesuffix('.weight')}'")
        elif tensor.shape != params[name].shape:
            problems.append(f"{key}: shape {tuple(tensor.shape)}, the norm has {tuple(params[name].shape)}")
        else:
            resolved[name] = tensor
    if problems:
        raise WeightsError(f"the adapter does not fit this model: {summarize_problems(problems, len(gains))}")
    originals = getattr(transformer, QK_NORM_ORIGINALS, {})
    with torch.no_grad():
        for name, tensor in resolved.items():
            originals.setdefault(name, params[name].detach().clone())
            params[name].copy_(tensor)
    setattr(transformer, QK_NORM_ORIGINALS, originals)


def restore_qk_norms(transformer: torch.nn.Module) -> int:
    """Put back the q/k norm gains an adapter replaced; returns how many."""
    originals = getattr(transformer, QK_NORM_ORIGINALS, {})
    params = qk_norm_parameters(transformer)
    with torch.no_grad():
        for name, tensor in originals.items():
            params[name].copy_(tensor)
    if hasattr(transformer, QK_NORM_ORIGINALS):
        delattr(transformer, QK_NORM_ORIGINALS)
    return len(originals)


def lora_module_name(key: str) -> tuple[str, str] | None:
    """('x_embedder', 'lora_A') for 'transformer.x_embedder.lora_A.weight'; None if not a LoRA key."""
    for part in ("lora_A", "lora_B"):
        marker = f".{part}."
        if marker in key:
            return key.split(marker)[0], part
    return None


def check_lora_keys(transformer: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Raise a `WeightsError` listing keys that name no Linear layer of the transformer or have wrong shapes."""
    modules = dict(transformer.named_modules())
    problems: list[str] = []
    gains = qk_norm_parameters(transformer)
    for key, tensor in state_dict.items():
        gain = gains.get(key.removeprefix("transformer."))
        if gain is not None and key.startswith("transformer."):  # a trained attention q/k norm (`QK_NORMS`)
            if tensor.shape != gain.shape:
                problems.append(f"{key}: shape {tuple(tensor.shape)}, the norm has {tuple(gain.shape)}")
            continue
        parsed = lora_module_name(key)
        if parsed is None or not parsed[0].startswith("transformer."):
            problems.append(f"{key}: not a transformer LoRA key")
            continue
        name, part = parsed[0].removeprefix("transformer."), parsed[1]
        module = modules.get(name)
        if not isinstance(module, torch.nn.Linear):
            problems.append(f"{key}: the model has no Linear layer '{name}'")
            continue
        if tensor.ndim != 2:
            problems.append(f"{key}: expected a matrix, got shape {tuple(tensor.shape)}")
        elif part == "lora_A" and tensor.shape[1] != module.in_features:
            problems.append(f"{key}: in_features {tensor.shape[1]}, layer has {module.in_features}")
        elif part == "lora_B" and tensor.shape[0] != module.out_features:
            problems.append(f"{key}: out_features {tensor.shape[0]}, layer has {module.out_features}")
    if problems:
        raise WeightsError(
            f"the adapter does not fit this model: {summarize_problems(problems, len(state_dict))}. Was it "
            "trained for another base model (--base)?"
        )


def summarize_problems(problems: list[str], total: int | None = None, *, listed: int = 3) -> str:
    """One short clause for a list of "KEY: what is wrong" lines: the count, the first key with its problem,
    then the next few keys by name, written from where they differ from the first ("mismatched keys: 16 of
    32, first blocks.0.to_k.lora_A.weight: in_features 32, layer has 128; then ...to_k.lora_B.weight,
    ...to_q.lora_A.weight and 13 more"). Keys are shown without their "transformer." prefix."""

    def key_of(text: str) -> str:
        return text.partition(": ")[0].removeprefix("transformer.").removeprefix("base_model.model.")

    first = key_of(problems[0])
    detail = problems[0].partition(": ")[2]
    count = f"{len(problems)} of {total}" if total is not None and total >= len(problems) else f"{len(problems)}"
    text = f"mismatched keys: {count}, first {first}{': ' + detail if detail else ''}"
    others = [_from_difference(key_of(p), first) for p in problems[1:listed]]
    rest = len(problems) - 1 - len(others)
    if others:
        text += "; then " + ", ".join(others)
    if rest > 0:
        text += f" and {rest} more"
    return text


def _from_difference(key: str, reference: str) -> str:
    """`key` from the dotted part before the one where it departs from `reference` ("...to_k.lora_B.weight")."""
    parts, ref = key.split("."), reference.split(".")
    same = 0
    while same < min(len(parts), len(ref)) - 1 and parts[same] == ref[same]:
        same += 1
    start = max(0, same - 1)
    return key if start < 2 else "..." + ".".join(parts[start:])


def load_lora(pipe: FluxFillPipeline, state_dict: dict[str, torch.Tensor], *, scale: float = 1.0) -> None:
    """Check and load a plain LoRA into the pipeline's transformer as adapter 'edit' with weight `scale`."""
    try:
        converted = pipe.lora_state_dict(dict(state_dict))
    except Exception as err:
        raise WeightsError(f"the adapter is not in a LoRA format diffusers understands ({err})") from err
    if not converted:
        raise WeightsError("the adapter file holds no tensors")
    check_lora_keys(pipe.transformer, converted)
    # Edit adapters hold transformer keys only, checked above: diffusers' warning that the text encoder got
    # none ("safe to ignore") would be printed on every load.
    text_lora_log = logging.getLogger("diffusers.loaders.lora_base")
    level = text_lora_log.level
    text_lora_log.setLevel(logging.ERROR)
    try:
        pipe.load_lora_weights(converted, adapter_name=ADAPTER_NAME)
    finally:
        text_lora_log.setLevel(level)
    pipe.set_adapters([ADAPTER_NAME], [scale])
