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
    for key, tensor in state_dict.items():
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
