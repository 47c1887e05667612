"""Full-size FLUX.1 Fill on a GPU, random weights: the official procedure against diptych's default and each
speed / memory mode, for the day a GPU is lent (no model hub needed: everything is built on the device).

What is built: the FLUX.1 Fill transformer (19 double + 38 single blocks, hidden 3072, 384 input channels) and
the FLUX VAE with random weights, created on the meta device and materialised in bf16 on the GPU; prompt
embeddings of the real shapes (T5 512 x 4096, pooled CLIP 768) instead of text encoders; a rank-32 LoRA on
the official ICEdit adapter's layers. (The LoRA-MoE variant is not in this script yet.)

What is measured, at 512 x 512 panels (a 1024 x 512 canvas: 2048 image + 512 text tokens), 28 steps:
- the official procedure: `FluxFillPipeline.__call__` with the LoRA loaded by peft, unfused, bf16;
- diptych: `Editor` on the same pipeline (LoRA unfused, then fused), each cache mode of `diptych.speed`,
  regional compile and, last (it changes the weights for good), fp8;
- seconds per edit (median), peak GPU memory, achieved TFLOP/s of the transformer's matmuls against the GPU's
  bf16 peak (`--peak-tflops`, default an H100/H200's 989), PSNR against diptych's default;
- the early filter, 6 candidates x 10 early steps, against one edit: diptych resumes the winner (6 x 10 + 18
  NFE) where the paper restarts it (6 x 10 + 28).

Targets (docs/performance.md): default <= 3 s, fastest mode <= 1.5 s at PSNR >= 30 dB, >= 2x the official
procedure, the 6 x 10 filter <= 3x one edit, a mode under 16 GB.

Example:
    python benchmarks/gpu_flux.py                      # on the GPU machine
    python benchmarks/gpu_flux.py --tiny --device cpu  # a check that the script runs (tiny widths)
"""

from __future__ import annotations

import argparse
import gc
import shlex
import statistics
import sys
import time

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxTransformer2DModel

from diptych.adapters.moe import DEFAULT_LORA_TARGETS, DEFAULT_MOE_TARGETS
from diptych.editor import Editor, EditRequest
from diptych.errors import DiptychError
from diptych.metrics import psnr
from diptych.speed import quantize_transformer, weight_bytes
from diptych.testing import FLUX_FILL_TRANSFORMER_CONFIG, random_image, random_lora_state_dict

FLUX_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 16,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
TINY = {
    "num_layers": 1,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 4,
    "axes_dims_rope": (4, 6, 6),
}
TINY_VAE = {"block_out_channels": [16, 16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8}
OFFICIAL_TARGETS = DEFAULT_LORA_TARGETS + DEFAULT_MOE_TARGETS  # the official adapter's layers, as one LoRA


def materialise(model: torch.nn.Module, device: str, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """Random weights on the device without a CPU copy: normal(0, 0.02) matrices, unit norms, zero biases."""
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.02, generator=gen)
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        for b in model.buffers():  # none in these models; kept for safety
            b.zero_()
    return model.to(dtype).eval()


def build_pipeline(args) -> FluxFillPipeline:
    config = {**FLUX_FILL_TRANSFORMER_CONFIG, **(TINY if args.tiny else {})}
    vae_config = {**FLUX_VAE, **(TINY_VAE if args.tiny else {})}
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**config)
        vae = AutoencoderKL(**vae_config)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    transformer = materialise(transformer, args.device, dtype, seed=0)
    vae = materialise(vae, args.device, dtype, seed=1)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    return FluxFillPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )


class RealShapesEncoder:
    """Prompt embeddings of FLUX's real shapes (T5: 512 x 4096, CLIP pooled: 768), random, per prompt."""

    def __init__(self, pipe: FluxFillPipeline, tokens: int = 512):
        config = pipe.transformer.config
        self.shape = (tokens, config.joint_attention_dim)
        self.pooled = config.pooled_projection_dim
        self.device, self.dtype = pipe.transformer.device, pipe.transformer.dtype

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(len(prompts))
        embeds = torch.randn(len(prompts), *self.shape, generator=gen) * 0.1
        pooled = torch.randn(len(prompts), self.pooled, generator=gen) * 0.1
        return embeds.to(self.device, self.dtype), pooled.to(self.device, self.dtype)


def transformer_tflop(pipe: FluxFillPipeline, image_tokens: int, text_tokens: int) -> float:
    """TFLOP of one transformer forward: 2 x (matmul weights) x tokens, plus attention (4 x seq^2 x width)."""
    config = pipe.transformer.config
    width = config.num_attention_heads * config.attention_head_dim
    seq = image_tokens + text_tokens
    double = sum(p.numel() for n, p in pipe.transformer.transformer_blocks.named_parameters() if p.ndim == 2)
    single = sum(p.numel() for n, p in pipe.transformer.single_transformer_blocks.named_parameters() if p.ndim == 2)
    per_layer_attention = 4 * seq * seq * width
    blocks = config.num_layers + config.num_single_layers
    # Double blocks: image weights see image tokens, text weights text tokens (half the block's weights each).
    flops = double * (image_tokens + text_tokens) + 2 * single * seq + blocks * per_layer_attention
    return flops / 1e12


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(name: str, run, args, reference=None) -> dict:
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    image = run()  # warm-up (compile, allocator)
    times = []
    for _ in range(args.repeats):
        sync(args.device)
        began = time.perf_counter()
        image = run()
        sync(args.device)
        times.append(time.perf_counter() - began)
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
    quality = psnr(image, reference) if reference is not None else float("nan")
    return {"name": name, "s": statistics.median(times), "peak_gb": peak, "psnr": quality, "image": image}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--panel", type=int, default=512, help="panel side in pixels (canvas 2 x panel wide)")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=3, help="timed edits per variant (median)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak")
    parser.add_argument("--tiny", action="store_true", help="tiny widths: check that the script runs")
    parser.add_argument("--skip", nargs="*", default=[], help="variants to leave out")
    args = parser.parse_args()
    print("command: python benchmarks/gpu_flux.py " + shlex.join(sys.argv[1:]))
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")

    pipe = build_pipeline(args)
    lora = random_lora_state_dict(pipe.transformer, rank=32, targets=OFFICIAL_TARGETS, std=0.01)
    pipe.load_lora_weights(lora, adapter_name="icedit")
    source = random_image(args.panel, args.panel, seed=0)
    request = EditRequest(source, "make the sky a sunset", 42)
    editor = Editor(pipe, encoder=RealShapesEncoder(pipe), default_width=args.panel)
    editor.adapter_kind = "lora"
    image_tokens = (2 * args.panel // 16) * (args.panel // 16)
    tflop = transformer_tflop(pipe, image_tokens, 512)

    def official():
        item = editor.prepare(request)
        embeds, pooled = editor.encoder.encode([item.prompt])
        return pipe(
            prompt_embeds=embeds,
            pooled_prompt_embeds=pooled,
            image=item.canvas,
            mask_image=item.fill_mask,
            height=item.canvas.height,
            width=item.canvas.width,
            guidance_scale=50.0,
            num_inference_steps=args.steps,
            generator=torch.Generator("cpu").manual_seed(request.seed),
        ).images[0]

    def diptych():
        return editor.edit(request.image, request.instruction, seed=request.seed, steps=args.steps)

    rows = [measure("official: FluxFillPipeline + peft LoRA (unfused)", official, args)]
    default = measure("diptych default (LoRA unfused)", diptych, args)
    rows.append(default)
    variants = []
    variants.append(("diptych, LoRA fused", lambda: editor.fuse_adapter(), lambda: editor.unfuse_adapter()))
    for mode in ("fbcache", "fbcache:0.12", "taylorseer", "magcache", "fastercache"):
        variants.append((f"diptych --cache {mode}", lambda m=mode: setattr(editor, "cache", m), lambda: None))
    variants.append(("diptych --compile (regional)", lambda: pipe.transformer.compile_repeated_blocks(), None))
    for name, setup, teardown in variants:
        if name in args.skip:
            continue
        try:
            setup()
            rows.append(measure(name, diptych, args, reference=default["image"]))
        except (DiptychError, RuntimeError, ValueError, ImportError) as err:
            print(f"{name}: skipped ({type(err).__name__}: {err})", file=sys.stderr)
        finally:
            editor.cache = None
            if teardown is not None:
                teardown()
    if args.device.startswith("cuda") and "fp8" not in args.skip:
        try:
            editor.unfuse_adapter()
            quantize_transformer(pipe.transformer, "fp8")
            editor.quantized = "fp8"
            rows.append(measure("diptych --quantize fp8", diptych, args, reference=default["image"]))
        except (DiptychError, RuntimeError, ValueError, ImportError) as err:
            print(f"fp8: skipped ({type(err).__name__}: {err})", file=sys.stderr)

    from diptych.scaling.early_filter import edit_with_early_filter
    from diptych.scaling.judges import CallableJudge

    judge = CallableJudge(lambda s, c, i: float(np.asarray(c, dtype=np.float64).mean()))

    def early_filter():
        return edit_with_early_filter(
            editor, request, judge=judge, candidates=6, early_steps=min(10, args.steps - 1), steps=args.steps
        ).image

    filtered = measure("early filter 6 x 10, winner resumed (6 x 10 + 18 NFE)", early_filter, args)
    one_edit = default["s"]
    early = min(10, args.steps - 1)
    restart_nfe, resumed_nfe = 6 * early + args.steps, 6 * early + args.steps - early

    print(f"\n{image_tokens} image + 512 text tokens, {args.steps} steps; {tflop:.2f} TFLOP per transformer forward\n")
    print("| procedure | s / edit | vs official | peak GB | TFLOP/s (share of peak) | PSNR vs default |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    official_s = rows[0]["s"]
    for row in [*rows, filtered]:
        achieved = tflop * args.steps / row["s"]
        print(
            f"| {row['name']} | {row['s']:.2f} | {official_s / row['s']:.2f}x | {row['peak_gb']:.1f} | "
            f"{achieved:.0f} ({100 * achieved / args.peak_tflops:.0f}%) | {row['psnr']:.1f} |"
        )
    print(
        f"\nearly filter: {filtered['s'] / one_edit:.2f}x one default edit; NFE {resumed_nfe} resumed vs "
        f"{restart_nfe} for the paper's restart ({resumed_nfe / args.steps:.2f}x vs {restart_nfe / args.steps:.2f}x "
        "the NFE of one edit)"
    )
    print(f"transformer weights: {weight_bytes(pipe.transformer) / 2**30:.1f} GiB as last measured")


if __name__ == "__main__":
    main()
