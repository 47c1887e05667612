"""Early-filter inference-time scaling, selection side: judges and tournaments.

The editor runs N seeds for K early steps, decodes an x0 preview per seed and calls
:func:`select_best` with a judge to keep the seed worth finishing (ICEdit appendix B.3).

Example::

    from diptych.scaling import load_judge, select_best

    judge = load_judge("vlm:http://localhost:8000/v1?model=Qwen/Qwen2.5-VL-72B-Instruct")
    choice = select_best(judge, source, previews, "make the sky red", strategy="bubble", swap=True)
    best_seed = seeds[choice.index]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diptych.scaling.judges import (
    CLARIFY_PROMPT,
    PAIRWISE_PROMPT,
    CallableJudge,
    CLIPJudge,
    Judge,
    JudgeError,
    LocalVLMJudge,
    PairwiseJudge,
    ScoringJudge,
    Verdict,
    can_compare,
    can_score,
    pairwise_parts,
    parse_choice,
    verdict_from_answer,
)
from diptych.scaling.spec import KNOWN_SCHEMES, JudgeSpecError, load_judge
from diptych.scaling.tournament import STRATEGIES, Comparison, Selection, Strategy, select_best

if TYPE_CHECKING:
    from diptych.scaling.vlm_http import VLMJudge

__all__ = [
    "CLARIFY_PROMPT",
    "KNOWN_SCHEMES",
    "PAIRWISE_PROMPT",
    "STRATEGIES",
    "CLIPJudge",
    "CallableJudge",
    "Comparison",
    "Judge",
    "JudgeError",
    "JudgeSpecError",
    "LocalVLMJudge",
    "PairwiseJudge",
    "ScoringJudge",
    "Selection",
    "Strategy",
    "VLMJudge",
    "Verdict",
    "can_compare",
    "can_score",
    "load_judge",
    "pairwise_parts",
    "parse_choice",
    "select_best",
    "verdict_from_answer",
]


def __getattr__(name: str) -> Any:
    # The HTTP judge needs httpx; import it only when asked for, so the rest works without it.
    if name == "VLMJudge":
        from diptych.scaling.vlm_http import VLMJudge

        return VLMJudge
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
