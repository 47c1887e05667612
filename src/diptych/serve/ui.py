"""The web UI (Gradio), mounted on the API's FastAPI app and calling the same `EditService` in-process.

Every edit is a turn of a session kept in the same SQLite store as the API's sessions: uploading a new
image starts a new session, each Edit adds a turn (painted strokes become that turn's mask), Undo drops
the last one. Early filtering shows the candidates' previews with the judge's pick.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..errors import DiptychError
from ..images import load_image

if TYPE_CHECKING:
    import gradio as gr
    from fastapi import FastAPI

    from .service import EditService

__all__ = ["UiHandlers", "build_ui", "mount_ui"]

# The UI must not phone home (and offline machines must not wait for it).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def fingerprint(image: Image.Image) -> str:
    """Identifies an image by its pixels, to tell a fresh upload from the current session image."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def mask_from_layers(layers: list[Image.Image] | None, size: tuple[int, int]) -> Image.Image | None:
    """The brush strokes of all layers as a mask (white = painted = may change), or None if nothing is painted."""
    painted = np.zeros((size[1], size[0]), dtype=bool)
    for layer in layers or []:
        if layer is None:
            continue
        rgba = np.asarray(layer.convert("RGBA").resize(size, Image.Resampling.NEAREST))
        painted |= rgba[..., 3] > 0
    if not painted.any():
        return None
    return Image.fromarray(np.where(painted, 255, 0).astype(np.uint8), mode="L")


class UiHandlers:
    """The UI's event handlers, as plain methods so they can be tested without a browser."""

    def __init__(self, service: EditService):
        self.service = service

    def _history(self, session_id: str | None) -> list[list[Any]]:
        if session_id is None:
            return []
        info = self.service.sessions.info(session_id)
        return [[t["turn"], t["instruction"], t["seed"]] for t in info["history"]]

    def edit(
        self,
        background: Image.Image | None,
        painted: dict[str, Any] | None,
        instruction: str,
        seed: float | None,
        steps: float,
        guidance: float,
        candidates: float,
        early_steps: float,
        threshold: float,
        state: dict[str, Any] | None,
    ) -> tuple:
        """One turn on the uploaded/current image `background`, restricted to the strokes in `painted` (the mask
        editor's value) if any. Returns (image, mask editor, before/after, result, candidates, history, status,
        state)."""
        import gradio as gr

        state = dict(state or {})
        if background is None:
            raise gr.Error("Upload an image first.")
        try:
            current = load_image(background, max_pixels=self.service.settings.max_pixels)
            if state.get("session") is None or state.get("fingerprint") != fingerprint(current):
                state["session"] = self.service.sessions.create(
                    current, threshold=threshold or None, seed=int(seed) if seed is not None else 42
                )
            mask = mask_from_layers((painted or {}).get("layers"), current.size)
            fields = {
                "instruction": instruction,
                "seed": None if seed is None else int(seed),
                "steps": int(steps),
                "guidance": guidance,
                "candidates": int(candidates),
                "early_steps": int(early_steps),
            }
            plan = self.service.sessions.plan_turn(state["session"])
            if mask is not None and mask.size != plan.previous.size:
                mask = mask.resize(plan.previous.size, Image.Resampling.NEAREST)
            options = self.service.options(fields, default_seed=plan.default_seed)
            result = self.service.edit(options, plan.previous, mask)
            image = self.service.commit(plan, result)
        except DiptychError as err:
            raise gr.Error(str(err)) from None
        state["fingerprint"] = fingerprint(image)
        meta = result.metadata()
        gallery = []
        if result.early_filter is not None:
            winner = result.early_filter["winner_index"]
            for index, (preview, s) in enumerate(zip(result.previews, result.early_filter["seeds"], strict=True)):
                gallery.append((preview, f"seed {s}" + (" (judge's pick)" if index == winner else "")))
        status = (
            f"Turn {plan.index}: seed {meta['seed']}, {meta['steps']} steps, {meta['width']}x{meta['height']}, "
            f"{meta['timings']['run_s']:.2f} s" + (f"; read as {meta['read_as']!r}" if "read_as" in meta else "")
        )
        editor_value = {"background": image, "layers": [], "composite": image}
        return (
            image,
            editor_value,
            (plan.previous.resize(image.size), image),
            image,
            gallery,
            self._history(state["session"]),
            status,
            state,
        )

    def undo(self, state: dict[str, Any] | None) -> tuple:
        """Drop the last turn: returns (image, mask editor, before/after, result, history, status, state)."""
        import gradio as gr

        state = dict(state or {})
        if state.get("session") is None:
            raise gr.Error("Nothing to undo yet.")
        try:
            turns = self.service.sessions.undo(state["session"])
            image = self.service.sessions.image(state["session"])
        except DiptychError as err:
            raise gr.Error(str(err)) from None
        state["fingerprint"] = fingerprint(image)
        before = self.service.sessions.image(state["session"], max(turns - 1, 0)).resize(image.size)
        editor_value = {"background": image, "layers": [], "composite": image}
        return (
            image,
            editor_value,
            (before, image),
            image,
            self._history(state["session"]),
            f"Undone: {turns} turn(s) left.",
            state,
        )


def build_ui(service: EditService) -> gr.Blocks:
    """The Gradio Blocks of the editor UI, wired to `service`."""
    import gradio as gr

    settings = service.settings
    handlers = UiHandlers(service)
    has_judge = service.judge is not None
    with gr.Blocks(title="diptych", analytics_enabled=False) as blocks:
        gr.Markdown("## diptych: edit an image by saying what to change")
        state = gr.State({})
        with gr.Row():
            with gr.Column():
                source = gr.Image(
                    label="Image",
                    type="pil",
                    image_mode="RGB",
                    format="png",
                    sources=["upload", "clipboard"],
                    elem_id="source",
                )
                with gr.Accordion("Mask brush (optional): paint where the edit may change", open=False):
                    painted = gr.ImageEditor(
                        label="Mask",
                        type="pil",
                        image_mode="RGBA",
                        sources=[],
                        format="png",
                        brush=gr.Brush(colors=["#ff0000"], color_mode="fixed"),
                        elem_id="mask",
                    )
                instruction = gr.Textbox(
                    label="Instruction", placeholder="make the sky purple", max_lines=3, elem_id="instruction"
                )
                with gr.Accordion("Advanced settings", open=False):
                    seed = gr.Number(label="Seed (empty: next of the session)", value=None, precision=0)
                    steps = gr.Slider(1, settings.max_steps, value=settings.default_steps, step=1, label="Steps")
                    guidance = gr.Slider(
                        1, settings.max_guidance, value=settings.default_guidance, step=0.5, label="Guidance"
                    )
                    candidates = gr.Slider(
                        1,
                        max(2, settings.max_candidates),  # Gradio needs min < max even when disabled
                        value=1,
                        step=1,
                        label="Candidates (early filter)" + ("" if has_judge else ": needs --judge"),
                        interactive=has_judge,
                    )
                    early_steps = gr.Slider(
                        1, settings.max_steps, value=settings.default_early_steps, step=1, label="Early steps"
                    )
                    threshold = gr.Number(
                        label="Multi-turn threshold (Emu Edit; 0 = off; applies to new sessions)",
                        value=settings.default_threshold or 0,
                        minimum=0,
                        maximum=1,
                    )
                with gr.Row():
                    run = gr.Button("Edit", variant="primary", elem_id="edit-button")
                    undo = gr.Button("Undo", elem_id="undo-button")
            with gr.Column():
                result = gr.Image(
                    label="Result", type="pil", format="png", interactive=False, elem_id="result", buttons=["download"]
                )
                compare = gr.ImageSlider(label="Before / after", type="pil", interactive=False)
                status = gr.Markdown(elem_id="status")
                gallery = gr.Gallery(label="Early-filter candidates", columns=4, height="auto")
                history = gr.Dataframe(
                    headers=["turn", "instruction", "seed"], label="History", interactive=False, elem_id="history"
                )
        run.click(
            handlers.edit,
            inputs=[source, painted, instruction, seed, steps, guidance, candidates, early_steps, threshold, state],
            outputs=[source, painted, compare, result, gallery, history, status, state],
            concurrency_limit=settings.max_batch,
        )
        undo.click(handlers.undo, inputs=[state], outputs=[source, painted, compare, result, history, status, state])
        # The brush paints over the image being edited. `input` (user upload, paste, clear), not `change`: edit and
        # undo set the brush themselves, and a second run re-saving the same image into Gradio's content-addressed
        # cache (a truncating write) tore the result image while the browser was reading it.
        source.input(
            lambda image: {"background": image, "layers": [], "composite": image} if image is not None else None,
            inputs=[source],
            outputs=[painted],
        )
    return blocks


def mount_ui(app: FastAPI, service: EditService, *, path: str = "/ui") -> FastAPI:
    """Mount the UI on `app` at `path` (same process, same model queue)."""
    import gradio as gr

    return gr.mount_gradio_app(
        app,
        build_ui(service),
        path=path,
        ssr_mode=False,
        max_file_size=service.settings.max_upload_bytes,
        footer_links=["api"],
    )
