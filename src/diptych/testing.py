"""Tiny random models built offline, for tests, benchmarks and examples without any download.

`build_tiny_fill_pipeline` makes a complete `FluxFillPipeline` (CLIP + T5 text encoders with tokenizers
built in memory, a small VAE and a small Fill transformer); `save_pretrained` writes it in the same layout
as FLUX.1 Fill dev, so tests load it through the same `Editor.from_pretrained` path users take.

`FakeChatServer` is an OpenAI-compatible chat-completions endpoint on 127.0.0.1 that answers from a script
(`ChatReply`) and records every request (`ChatRequest`), for testing the HTTP judges and LLM clients offline.
"""

from __future__ import annotations

import json
import string
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxTransformer2DModel
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from .sampler import FLUX_SCHEDULER_CONFIG

_CHARS = string.ascii_lowercase + string.digits + ".,!?'-:;()\"{}"


def tiny_clip_tokenizer(chars: str = _CHARS, merges: Sequence[tuple[str, str]] = ()) -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer with CLIP's special tokens and 77-token limit: the vocabulary is
    the specials, `chars`, `chars` + "</w>" (word-final), then each merge's result, in `merges` order."""
    specials = ["<|startoftext|>", "<|endoftext|>"]
    tokens = specials + list(chars) + [c + "</w>" for c in chars] + [a + b for a, b in merges]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=list(merges), model_max_length=77)


def tiny_t5_tokenizer() -> T5TokenizerFast:
    """A character-level Unigram tokenizer wrapped as T5's fast tokenizer."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in _CHARS] + [("▁" + c, -2.5) for c in _CHARS]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return T5TokenizerFast(tokenizer_object=tok, extra_ids=0, model_max_length=512)


#: FLUX.1 Fill dev's transformer config (its `transformer/config.json`): the widths the benchmarks build with random
#: weights when no weights can be downloaded.
FLUX_FILL_TRANSFORMER_CONFIG: dict = {
    "patch_size": 1,
    "in_channels": 384,
    "out_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}


def build_tiny_transformer(
    seed: int | None = 0,
    *,
    latent_channels: int = 4,
    vae_levels: int = 2,
    num_layers: int = 1,
    num_single_layers: int = 1,
) -> FluxTransformer2DModel:
    """A random FLUX.1-Fill-shaped transformer (width 32, 2 heads of 16), in eval mode.

    Its input is what `build_tiny_fill_pipeline` feeds it: noisy and masked-image latents (`4 * latent_channels`
    each after 2x2 packing) and the packed pixel mask of a VAE with `vae_levels` levels, so the defaults give
    `in_channels=48`, `out_channels=16`. `seed` seeds torch's global generator first; `None` leaves it as it is.
    """
    if seed is not None:
        torch.manual_seed(seed)
    scale = 2 ** (vae_levels - 1)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        # noisy latents + masked-image latents (4*lc each after 2x2 packing) + the packed pixel mask
        in_channels=8 * latent_channels + 4 * scale * scale,
        out_channels=4 * latent_channels,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=True,
    )
    return transformer.eval()


def build_tiny_fill_pipeline(
    seed: int = 0,
    *,
    latent_channels: int = 4,
    vae_levels: int = 2,
    num_layers: int = 1,
    num_single_layers: int = 1,
    dtype: torch.dtype = torch.float32,
) -> FluxFillPipeline:
    """A random FLUX.1-Fill-shaped pipeline small enough for a CPU test (well under 1 MB of weights)."""
    torch.manual_seed(seed)
    clip_tok, t5_tok = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    clip = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(clip_tok),
            projection_dim=32,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok),
            d_model=32,
            d_ff=37,
            d_kv=8,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * vae_levels,
        up_block_types=["UpDecoderBlock2D"] * vae_levels,
        block_out_channels=(8,) * vae_levels,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    transformer = build_tiny_transformer(
        None,  # go on from the generator state the text encoders and the VAE left
        latent_channels=latent_channels,
        vae_levels=vae_levels,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG)
    pipe = FluxFillPipeline(
        scheduler=scheduler,
        vae=vae.eval(),
        text_encoder=clip.eval(),
        tokenizer=clip_tok,
        text_encoder_2=t5.eval(),
        tokenizer_2=t5_tok,
        transformer=transformer.eval(),
    )
    return pipe.to(dtype=dtype)


def save_tiny_fill_pipeline(path: str | Path, seed: int = 0, **kwargs) -> Path:
    """Build a tiny pipeline and write it in diffusers layout; returns the folder."""
    path = Path(path)
    build_tiny_fill_pipeline(seed, **kwargs).save_pretrained(path)
    return path


def random_lora_state_dict(
    transformer: FluxTransformer2DModel,
    *,
    rank: int = 4,
    targets: tuple[str, ...] = ("attn.to_q", "attn.to_k", "attn.to_v", "ff.net.2", "proj_mlp"),
    seed: int = 0,
    std: float = 0.2,
) -> dict[str, torch.Tensor]:
    """A LoRA in diffusers' Flux format (`transformer.<module>.lora_A/B.weight`) with non-zero B, so it
    visibly changes the output, on every Linear whose name ends with one of `targets`."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(targets) and "blocks" in name:
            state[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=gen) * std
            state[f"transformer.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=gen) * std
    return state


def save_random_lora(path: str | Path, transformer: FluxTransformer2DModel, **kwargs) -> Path:
    """Write `random_lora_state_dict` as a .safetensors file."""
    path = Path(path)
    save_file({k: v.contiguous() for k, v in random_lora_state_dict(transformer, **kwargs).items()}, str(path))
    return path


def save_gguf_transformer(transformer: FluxTransformer2DModel, path: str | Path, *, quant: str = "Q8_0") -> Path:
    """Write the transformer's weights, diffusers keys, to a GGUF file with the `gguf` package: 2-D weights whose
    rows are whole blocks of `quant` (Q8_0: 32 values) quantized, every other tensor F32."""
    import gguf

    path = Path(path)
    qtype = gguf.GGMLQuantizationType[quant]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    writer = gguf.GGUFWriter(str(path), arch="flux")
    for name, tensor in transformer.state_dict().items():
        array = tensor.detach().float().cpu().numpy()
        if name.endswith(".weight") and array.ndim == 2 and array.shape[-1] % block == 0:
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)  # bytes: shape inferred
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def constant_locator(base: str | Path, logit: float):
    """A `diptych.locator.Locator` on `base`'s transformer whose head gives every token the same `logit` (below 0:
    the region is the single top-left token; above: the whole panel): a locator whose region tests know."""
    from .locator import Locator, ReferentHead

    transformer = FluxTransformer2DModel.from_pretrained(base, subfolder="transformer")
    head = ReferentHead(transformer.config.num_attention_heads * transformer.config.attention_head_dim)
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.fill_(logit)
    return Locator(transformer, head)


def random_image(width: int, height: int, seed: int = 0):
    """A PIL RGB image of uniform random pixels (reproducible from `seed`)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def save_tiny_clip(folder: str | Path, *, tokenizer=None, num_layers: int = 1, seed: int = 0) -> Path:
    """A random CLIP (32-wide towers, 32 px images) with its tokenizer and image processor, saved in the layout
    `CLIPModel.from_pretrained` reads; `tokenizer` defaults to `tiny_clip_tokenizer()`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = Path(folder)
    tokenizer = tokenizer or tiny_clip_tokenizer()
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": num_layers, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={
            **tower,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 77,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={**tower, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------ fake chat server


def chat_completion(text: str, *, model: str = "fake-model") -> dict[str, Any]:
    """An OpenAI-style `chat.completion` response whose one choice says `text`."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }


@dataclass
class ChatReply:
    """What `FakeChatServer` answers to one request.

    The body is `body` when given (a dict is sent as JSON, bytes as they are), else a `chat_completion` saying
    `text`. `headers` are added to the response (after Content-Type and Content-Length); the server waits
    `delay` seconds before answering.
    """

    text: str = ""
    status: int = 200
    body: dict[str, Any] | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    def payload(self) -> bytes:
        """The response body as sent."""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(chat_completion(self.text) if self.body is None else self.body).encode()


@dataclass
class ChatRequest:
    """One request `FakeChatServer` received: its path, headers, JSON body (`None` when the body is not JSON;
    `raw` keeps the bytes) and `time.monotonic()` when it arrived."""

    path: str
    headers: dict[str, str]
    body: Any
    at: float
    raw: bytes = field(default=b"", repr=False)


Responder = Callable[[Any], ChatReply | str]
"""A function of a request's JSON body giving the reply (see `FakeChatServer`)."""


class FakeChatServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1 (a free port), served from a thread.

    Every POST (to any path; clients use `url + "/chat/completions"`) is recorded in `requests` and answered
    with the next reply of `script`; when the script is empty, with `responder(body)` if one is set, else with
    `default`. Replies are `ChatReply`s or plain strings (the answer text). `in_flight` counts requests being
    answered and `max_in_flight` the most at once. It serves as soon as it is built; `close()` (or leaving the
    `with` block) stops it::

        with FakeChatServer(default=ChatReply("1")) as server:
            server.script = [ChatReply(status=503), "Image 2"]
            judge = VLMJudge(server.url, "model")  # server.url ends in /v1
            ...
            assert server.requests[0].body["model"] == "model"
    """

    def __init__(
        self,
        script: list[ChatReply | str] | None = None,
        *,
        default: ChatReply | str | None = None,
        responder: Responder | None = None,
    ) -> None:
        self.script: list[ChatReply | str] = list(script or [])
        self.default: ChatReply | str = ChatReply("no reply scripted", status=500) if default is None else default
        self.responder = responder
        self.requests: list[ChatRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.httpd = _QuietHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._closed = False
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-chat-server", daemon=True
        )
        self._thread.start()

    @property
    def bodies(self) -> list[Any]:
        """The JSON bodies of the requests so far, in order of arrival."""
        with self.lock:
            return [r.body for r in self.requests]

    @property
    def paths(self) -> list[str]:
        """The paths of the requests so far, in order of arrival."""
        with self.lock:
            return [r.path for r in self.requests]

    def _next_reply(self, body: Any) -> ChatReply:
        with self.lock:
            reply = self.script.pop(0) if self.script else None
        if reply is None:
            reply = self.responder(body) if self.responder is not None else self.default
        return ChatReply(reply) if isinstance(reply, str) else reply

    def close(self) -> None:
        """Stop serving and free the port (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeChatServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _QuietHTTPServer(ThreadingHTTPServer):
    """Says nothing when a client hangs up (a test's client timing out) instead of printing a traceback."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler_for(server: FakeChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            with server.lock:
                server.requests.append(ChatRequest(self.path, dict(self.headers), body, time.monotonic(), raw))
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                reply = server._next_reply(body)
                time.sleep(reply.delay)
                payload = reply.payload()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (a timeout test)
            finally:
                with server.lock:
                    server.in_flight -= 1

    return Handler
