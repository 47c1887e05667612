"""Evaluation metrics for instruction-based editing: pixel distances (L1, L2), CLIP-I, CLIP-T /
CLIP-out, CLIP-dir and DINO as MagicBrush and the Emu Edit test set compute them, and VIEScore
through an OpenAI-compatible VLM.

Example::

    from diptych.eval import ClipMetrics, DinoMetrics, VieScorer, l1_distance

    clip = ClipMetrics.from_pretrained("openai/clip-vit-base-patch32")
    dino = DinoMetrics.from_pretrained("facebook/dino-vits16")
    l1 = l1_distance(edited, ground_truth)
    clip_i, dino_score = clip.clip_i(edited, ground_truth), dino.dino(edited, ground_truth)
    vie = VieScorer("vlm:http://localhost:8000/v1?model=Qwen/Qwen2.5-VL-72B-Instruct")
    print(vie.score(source, edited, "make the sky red").overall)
"""

from __future__ import annotations

from diptych.eval.vie import JudgeError, VieScore, VieScorer, parse_vie_answer, vie_overall
from diptych.eval.vlm_chat import VLMChat
from diptych.metrics import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_DINO_MODEL,
    METRIC_NAMES,
    ClipMetrics,
    DinoMetrics,
    dino_preprocess,
    l1_distance,
    l2_distance,
    to_unit_tensor,
)

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_DINO_MODEL",
    "METRIC_NAMES",
    "ClipMetrics",
    "DinoMetrics",
    "JudgeError",
    "VLMChat",
    "VieScore",
    "VieScorer",
    "dino_preprocess",
    "l1_distance",
    "l2_distance",
    "parse_vie_answer",
    "to_unit_tensor",
    "vie_overall",
]
