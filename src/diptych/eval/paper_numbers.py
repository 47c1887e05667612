"""Published numbers, put beside `diptych eval` reports so a run can be read against the papers.

Values are copied from the papers' tables (see /docs/evaluation.md for which table and what is known of
each protocol). Metric keys are those of `diptych.eval.benchmarks.METRICS`, plus `gpt4o_success` (the
ICEdit paper's GPT-4o success rate, which diptych does not compute) and `imgedit_overall`.

The two papers disagree on Emu Edit's own scores on its test set (ICEdit's table gives CLIP-I 0.877 where
the Emu Edit paper gives 0.859): they evaluated different sample sets or preprocessing. Both are listed,
each with its source, and neither is "the" reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["METRIC_LABELS", "PAPER_NUMBERS", "PaperRow", "paper_metrics", "paper_rows"]

ICEDIT = "ICEdit paper (arXiv 2504.20690)"
EMU_EDIT = "Emu Edit paper (arXiv 2311.10089)"
GEDIT = "GEdit-Bench leaderboard (GEdit-EN, VIEScore)"


@dataclass(frozen=True)
class PaperRow:
    """One model's published scores on one benchmark."""

    benchmark: str
    model: str
    source: str
    values: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def label(self) -> str:
        """ "Model (source)" for report tables."""
        return f"{self.model} ({self.source})"


def _row(benchmark: str, model: str, source: str, note: str = "", **values: float) -> PaperRow:
    return PaperRow(benchmark, model, source, dict(values), note)


_ICEDIT_EMU_NOTE = "CLIP-I and DINO between source and edit, CLIP-out with the output caption"
_ICEDIT_MB_NOTE = "turn protocol (final-turn or all-turn) not stated in the paper"

PAPER_NUMBERS: tuple[PaperRow, ...] = (
    # Emu Edit test set, ICEdit paper: CLIP-I / CLIP-out / DINO / GPT-4o success.
    _row("emu-edit", "ICEdit", ICEDIT, _ICEDIT_EMU_NOTE, clip_i=0.907, clip_out=0.305, dino=0.866, gpt4o_success=0.68),
    _row(
        "emu-edit", "Emu Edit", ICEDIT, _ICEDIT_EMU_NOTE, clip_i=0.877, clip_out=0.306, dino=0.844, gpt4o_success=0.72
    ),
    _row(
        "emu-edit", "UltraEdit", ICEDIT, _ICEDIT_EMU_NOTE, clip_i=0.880, clip_out=0.304, dino=0.847, gpt4o_success=0.54
    ),
    _row(
        "emu-edit",
        "InstructPix2Pix",
        ICEDIT,
        _ICEDIT_EMU_NOTE,
        clip_i=0.856,
        clip_out=0.292,
        dino=0.773,
        gpt4o_success=0.36,
    ),
    _row(
        "emu-edit",
        "FLUX.1 Fill (no training)",
        ICEDIT,
        _ICEDIT_EMU_NOTE,
        clip_i=0.794,
        clip_out=0.273,
        dino=0.659,
        gpt4o_success=0.24,
    ),
    # Emu Edit test set, Emu Edit paper: CLIP-dir / CLIP-img / CLIP-out / L1 / DINO.
    _row("emu-edit", "Emu Edit", EMU_EDIT, clip_dir=0.109, clip_i=0.859, clip_out=0.231, l1=0.094, dino=0.819),
    _row("emu-edit", "MagicBrush", EMU_EDIT, clip_dir=0.090, clip_i=0.838, clip_out=0.222, l1=0.100, dino=0.776),
    _row("emu-edit", "InstructPix2Pix", EMU_EDIT, clip_dir=0.078, clip_i=0.834, clip_out=0.219, l1=0.121, dino=0.762),
    # MagicBrush test set against the ground truth, ICEdit paper: L1 / CLIP-I / DINO.
    _row("magicbrush", "ICEdit", ICEDIT, _ICEDIT_MB_NOTE, l1=0.060, clip_i=0.928, dino=0.853),
    _row("magicbrush", "UltraEdit", ICEDIT, _ICEDIT_MB_NOTE, l1=0.066, clip_i=0.904, dino=0.852),
    _row("magicbrush", "MagicBrush", ICEDIT, _ICEDIT_MB_NOTE, l1=0.074, clip_i=0.908, dino=0.847),
    # GEdit-Bench (English), VIEScore overall on the 0-10 scale.
    _row("gedit", "Qwen-Image-Edit-2509", GEDIT, vie_overall=7.54),
    _row("gedit", "GPT-Image-1", GEDIT, vie_overall=7.53),
    _row("gedit", "Step1X-Edit v1.1", GEDIT, vie_overall=6.97),
    _row("gedit", "FLUX.1 Kontext dev", GEDIT, vie_overall=6.00),
    # ImgEdit-Bench overall (no loader in diptych; kept for completeness).
    _row("imgedit", "Qwen-Image-Edit", "ImgEdit-Bench", imgedit_overall=4.27),
    _row("imgedit", "FLUX.1 Kontext dev", "ImgEdit-Bench", imgedit_overall=3.71),
    _row("imgedit", "ICEdit", ICEDIT, imgedit_overall=3.05),
)

METRIC_LABELS: dict[str, str] = {
    "l1": "L1",
    "l2": "L2",
    "clip_i": "CLIP-I",
    "clip_t": "CLIP-T",
    "clip_out": "CLIP-out",
    "clip_dir": "CLIP-dir",
    "dino": "DINO",
    "success": "success",
    "vie_sc": "VIE SC",
    "vie_pq": "VIE PQ",
    "vie_overall": "VIE overall",
    "gpt4o_success": "GPT-4o success",
    "imgedit_overall": "ImgEdit overall",
}
"""Column headings of report tables."""


def paper_rows(benchmark: str) -> list[PaperRow]:
    """The published rows for `benchmark`, in table order (empty for benchmarks without any)."""
    return [row for row in PAPER_NUMBERS if row.benchmark == benchmark]


def paper_metrics(benchmark: str) -> list[str]:
    """Metric keys that some published row of `benchmark` reports, in first-seen order."""
    return list(dict.fromkeys(key for row in paper_rows(benchmark) for key in row.values))
