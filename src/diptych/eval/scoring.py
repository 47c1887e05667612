"""How each benchmark scores an edit, and the metric models it needs.

A benchmark's `Scoring` (set on the `Benchmark` by `load_benchmark`, from the registry in `benchmarks.py`)
says which models its metrics load and computes them for one edit; the runner only loops. Three kinds:

- `ImageMetricScoring`: L1 / L2 / CLIP-I / DINO of the edit against a reference image — the source (Emu Edit:
  no ground truth) or the ground truth (MagicBrush) — plus CLIP-T / CLIP-out and CLIP-dir from the captions;
- `VieScoring`: VIEScore by a VLM judge (GEdit-Bench), asked for a chunk of edits at once;
- `ShapesScoring`: the exact ShapesEdit success rule and L1 against the known target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..errors import DiptychError

if TYPE_CHECKING:
    from .benchmarks import Sample

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_DINO = "facebook/dino-vits16"
CLIP_METRICS = frozenset({"clip_i", "clip_t", "clip_out", "clip_dir"})
VIE_METRICS = frozenset({"vie_sc", "vie_pq", "vie_overall"})


class EvalError(DiptychError, ValueError):
    """An evaluation cannot run as asked: conflicting options, an output folder of another run, a sample without
    the ground truth its metric needs, ... (also `diptych.eval.runner.EvalError`)"""


class Scorers:
    """The metric models, each loaded on first use (CLIP, DINO, the VIEScore judge, L1/L2 functions).

    Tests and callers may pass ready objects (`clip_metrics`, `dino_metrics`, `vie_scorer`, `l1`, `l2`);
    otherwise they come from `diptych.metrics` / `diptych.eval.vie` with the names given here.
    """

    def __init__(
        self,
        *,
        clip: str = DEFAULT_CLIP,
        dino: str = DEFAULT_DINO,
        judge: str | None = None,
        device: str | None = None,
        clip_metrics: Any = None,
        dino_metrics: Any = None,
        vie_scorer: Any = None,
        l1: Callable[[Image.Image, Image.Image], float] | None = None,
        l2: Callable[[Image.Image, Image.Image], float] | None = None,
    ):
        self.clip_name, self.dino_name, self.judge_spec, self.device = clip, dino, judge, device
        self._clip, self._dino, self._vie, self._l1, self._l2 = clip_metrics, dino_metrics, vie_scorer, l1, l2

    @property
    def clip(self) -> Any:
        if self._clip is None:
            from ..metrics import ClipMetrics

            self._clip = ClipMetrics.from_pretrained(self.clip_name, device=self.device)
        return self._clip

    @property
    def dino(self) -> Any:
        if self._dino is None:
            from ..metrics import DinoMetrics

            self._dino = DinoMetrics.from_pretrained(self.dino_name, device=self.device)
        return self._dino

    @property
    def vie(self) -> Any:
        if self._vie is None:
            if not self.judge_spec:
                raise EvalError(
                    "VIEScore metrics need a judge: --judge 'vlm:http://host:8000/v1?model=Qwen/Qwen2.5-VL-72B-Instruct'"
                )
            self._vie = build_vie_scorer(self.judge_spec)
        return self._vie

    def prepare(self, scoring: Scoring, metrics: Sequence[str]) -> None:
        """Load the models `metrics` need under `scoring` (a bad model name or judge spec fails at once)."""
        for model in sorted(scoring.models(metrics)):  # a fixed order, so the same bad input names the same model
            getattr(self, model)

    def l1(self, a: Image.Image, b: Image.Image) -> float:
        if self._l1 is None:
            from ..metrics import l1_distance

            self._l1 = l1_distance
        return float(self._l1(a, b))

    def l2(self, a: Image.Image, b: Image.Image) -> float:
        if self._l2 is None:
            from ..metrics import l2_distance

            self._l2 = l2_distance
        return float(self._l2(a, b))


def build_vie_scorer(spec: str) -> Any:
    """A `diptych.eval.vie.VieScorer` from a judge spec such as `vlm:URL?model=NAME`."""
    from .vie import VieScorer

    return VieScorer(spec)


def _judge_source(sample: Sample, source: Image.Image | None) -> Image.Image:
    if sample.judge_source is not None:
        return sample.judge_source.load()
    return source if source is not None else sample.source.load()


def _resized(image: Image.Image, reference: Image.Image) -> Image.Image:
    # MagicBrush's official L1/L2 resize the output to the ground truth's size (bicubic).
    if image.size == reference.size:
        return image
    return image.resize(reference.size, Image.Resampling.BICUBIC)


class Scoring:
    """How one benchmark scores an edit. Subclasses say which models their metrics need (`models`) and
    compute them (`score`); those judged by a remote VLM override `judge_batch` to ask for a chunk at once."""

    def models(self, metrics: Sequence[str]) -> set[str]:
        """The `Scorers` attributes (`clip`, `dino`, `vie`) that `metrics` load."""
        return set()

    def judge_batch(
        self, samples: Sequence[Sample], produced: Sequence[Any], metrics: Sequence[str], scorers: Scorers
    ) -> list[Any]:
        """Per sample: a judge's result computed for the whole chunk, an exception, or None (nothing to judge)."""
        return [None] * len(samples)

    def score(
        self,
        sample: Sample,
        edited: Image.Image,
        wanted: set[str],
        scorers: Scorers,
        *,
        source: Image.Image | None,
        target: Image.Image | None,
        judged: Any,
    ) -> dict[str, float]:
        raise NotImplementedError


class ImageMetricScoring(Scoring):
    """L1, L2, CLIP-I and DINO against `reference` ("source" or "target"), CLIP-T / CLIP-out with the output
    caption and CLIP-dir with both captions (InstructPix2Pix's directional similarity)."""

    def __init__(self, reference: str):
        if reference not in ("source", "target"):
            raise ValueError(f"reference must be 'source' or 'target', got {reference!r}")
        self.reference = reference

    def models(self, metrics: Sequence[str]) -> set[str]:
        wanted = set(metrics)
        return ({"clip"} if wanted & CLIP_METRICS else set()) | ({"dino"} if "dino" in wanted else set())

    def score(self, sample, edited, wanted, scorers, *, source, target, judged):
        values: dict[str, float] = {}
        if source is None:
            source = sample.source.load()
        if self.reference == "source":
            reference = source
        else:
            if target is None:
                if sample.target is None:
                    raise EvalError(f"sample {sample.id} has no ground truth")
                target = sample.target.load()
            reference = target
        if "l1" in wanted:
            values["l1"] = scorers.l1(_resized(edited, reference), reference)
        if "l2" in wanted:
            values["l2"] = scorers.l2(_resized(edited, reference), reference)
        if "clip_i" in wanted:
            values["clip_i"] = float(scorers.clip.clip_i(reference, edited))
        if "dino" in wanted:
            values["dino"] = float(scorers.dino.dino(reference, edited))
        caption = sample.output_caption
        if caption and wanted & {"clip_out", "clip_t"}:
            score = float(scorers.clip.clip_t(edited, caption))
            values.update({k: score for k in ("clip_out", "clip_t") if k in wanted})
        if "clip_dir" in wanted and sample.input_caption and caption:
            values["clip_dir"] = float(scorers.clip.clip_dir(source, edited, sample.input_caption, caption))
        return values


class VieScoring(Scoring):
    """VIEScore (semantic consistency, perceptual quality, overall) by the VLM judge of `--judge`."""

    def models(self, metrics: Sequence[str]) -> set[str]:
        return {"vie"} if set(metrics) & VIE_METRICS else set()

    def judge_batch(self, samples, produced, metrics, scorers):
        """VIEScores of a chunk of edits in one `score_many` call (the judge's requests run concurrently), one
        per sample: a score, an exception for a failed sample, or None where there is nothing to score."""
        results: list[Any] = [None] * len(samples)
        if not set(metrics) & VIE_METRICS:
            return results
        todo, items = [], []
        for i, (sample, made) in enumerate(zip(samples, produced, strict=True)):
            if made.error is not None:
                continue
            try:
                items.append((_judge_source(sample, made.source), made.outputs[-1], sample.instruction))
                todo.append(i)
            except DiptychError as err:
                results[i] = err
        if not items:
            return results
        judge = scorers.vie
        if hasattr(judge, "score_many"):
            scores = judge.score_many(items, return_exceptions=True)
        else:
            scores = []
            for item in items:
                try:
                    scores.append(judge.score(*item))
                except DiptychError as err:
                    scores.append(err)
        for i, score in zip(todo, scores, strict=True):
            results[i] = score
        return results

    def score(self, sample, edited, wanted, scorers, *, source, target, judged):
        values: dict[str, float] = {}
        if wanted & VIE_METRICS:
            result = judged
            if result is None:
                result = scorers.vie.score(_judge_source(sample, source), edited, sample.instruction)
            for key, attr in (("vie_sc", "sc"), ("vie_pq", "pq"), ("vie_overall", "overall")):
                if key in wanted:
                    values[key] = float(getattr(result, attr))
        return values


class ShapesScoring(Scoring):
    """The exact ShapesEdit success rule (`diptych.shapes_core.edits.judge_edit`) and its L1, at the render size."""

    def score(self, sample, edited, wanted, scorers, *, source, target, judged):
        from ..shapes_core.edits import judge_edit

        size = int(sample.meta["size"])
        result = judge_edit(edited.resize((size, size), Image.Resampling.BICUBIC), sample.edit)
        values: dict[str, float] = {}
        if "success" in wanted:
            values["success"] = 1.0 if result.success else 0.0
        if "l1" in wanted:
            values["l1"] = float(result.l1)
        return values


def compute_metrics(
    scoring: Scoring,
    sample: Sample,
    edited: Image.Image,
    wanted: Sequence[str],
    scorers: Scorers,
    *,
    source: Image.Image | None = None,
    target: Image.Image | None = None,
    judged: Any = None,
) -> dict[str, float]:
    """The `wanted` metrics of one edited image under a benchmark's `scoring`; a metric whose inputs the sample
    lacks (no caption) is left out, and so is a non-finite value. `source` / `target` are the loaded images when
    the caller has them already; `judged` a judge's result already computed for this edit (`judge_batch`)."""
    values = scoring.score(sample, edited, set(wanted), scorers, source=source, target=target, judged=judged)
    return {k: v for k, v in values.items() if math.isfinite(v)}
