"""Early-filter inference-time scaling (ICEdit appendix B.3), with winner resume.

N candidate seeds run their first K steps batched together; each gets an x0 preview; a judge picks one;
the winner *resumes* from its saved state rather than restarting. That costs N*K + (steps - K) transformer
evaluations (NFE) instead of the paper's N*K + steps, and the result equals a plain edit with the
winner's seed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from ..errors import InputError
from ..files import write_atomic
from .judges import Judge
from .tournament import Selection, select_best

if TYPE_CHECKING:
    from ..sampler import FillSampler, FillState


class FilterEditor(Protocol):
    """The building blocks of `diptych.Editor` that the early filter composes. Typed by shape, so this module
    does not import the editor, which imports it for `Editor.edit(..., candidates=N)`. `request` is an
    `EditRequest` and the prepared items are the editor's `PreparedEdit`s (with their task resolved)."""

    sampler: FillSampler
    pipe: Any
    stochastic: bool

    def prepare(self, request: Any, *, width: int | None = None, template: str | None = None) -> Any: ...

    def start(self, items: Sequence[Any], *, steps: int, guidance: float, true_cfg_scale: float = 1.0) -> FillState: ...

    def finish(self, item: Any, canvas: Image.Image, *, keep_size: bool = False, feather: int = 3) -> Image.Image: ...

    def task_conditioning(self, tasks: Sequence[str] | None) -> AbstractContextManager[Any]: ...


@dataclass
class EarlyFilterResult:
    """The edit of the winning seed, with everything needed to audit the choice."""

    image: Image.Image
    seed: int
    seeds: list[int]  # each candidate's seed
    samplers: list[str]  # each candidate's sampler ("stochastic" or "euler")
    previews: list[Image.Image]  # each candidate's x0 preview after the early steps (edited panel)
    selection: Selection
    nfe: int  # transformer evaluations spent, winner resume included
    restart_nfe: int  # what the paper's procedure (restart the winner from scratch) would spend

    def summary(self) -> dict[str, Any]:
        """A JSON-able account of the choice: seeds, winner, judge calls, scores, comparisons, NFE."""
        sel = self.selection
        return {
            "seeds": self.seeds,
            "winner_index": sel.index,
            "winner_seed": self.seed,
            "samplers": self.samplers,
            "winner_sampler": self.samplers[sel.index],
            "strategy": sel.strategy,
            "judge_calls": sel.judge_calls,
            "scores": sel.scores,
            "comparisons": [
                {"pair": list(c.pair), "winner": c.winner, "reason": c.reason, "agreed": c.agreed}
                for c in sel.comparisons
            ],
            "nfe": self.nfe,
            "restart_nfe": self.restart_nfe,
        }


#: The ways a candidate may be sampled (`Editor.stochastic` on / off).
SAMPLERS = ("stochastic", "euler")


def edit_with_early_filter(
    editor: FilterEditor,
    request: Any,
    *,
    judge: Judge,
    candidates: int,
    early_steps: int,
    steps: int = 28,
    guidance: float = 50.0,
    true_cfg_scale: float = 1.0,
    width: int | None = None,
    template: str | None = None,
    keep_size: bool = False,
    feather: int = 3,
    strategy: str = "auto",
    swap: bool = False,
    batch_size: int | None = None,
    samplers: Sequence[str] | None = None,
    save_candidates: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EarlyFilterResult:
    """Run `candidates` seeds (request.seed, request.seed + 1, ...) for `early_steps`, judge, finish the winner.

    `editor` is a `diptych.Editor` and `request` a `diptych.editor.EditRequest`.

    `samplers` (a subset of `SAMPLERS`; default: the editor's own): every seed runs with each, so there are
    `candidates * len(samplers)` candidates, sampler-major. Seeds and samplers give different kinds of variety:
    on the built-in model, Euler candidates recover edits that more stochastic seeds do not (docs/shapes.md).
    The result equals a plain edit with the winner's seed and sampler.

    `batch_size` bounds how many candidates go through the transformer at once (default: all of one sampler).
    With a task embedding on the editor, every candidate is conditioned on `request.task` (or the predicted
    task). The NFE counts transformer passes: two per sample and step with `true_cfg_scale` > 1.
    """
    if candidates < 1:
        raise InputError(f"candidates must be at least 1, got {candidates}")
    if not 1 <= early_steps <= steps:
        raise InputError(f"early steps must be between 1 and steps ({steps}), got {early_steps}")
    own = "stochastic" if editor.stochastic else "euler"
    samplers = list(samplers) if samplers else [own]
    unknown = sorted(set(samplers) - set(SAMPLERS))
    if unknown or len(set(samplers)) != len(samplers):
        raise InputError(f"samplers must be distinct names from {', '.join(SAMPLERS)}; got {', '.join(samplers)}")
    batch_size = batch_size or candidates
    base = editor.prepare(request, width=width, template=template)
    seeds = [base.seed + i for i in range(candidates)]
    items = [replace(base, seed=s) for s in seeds]
    count = candidates * len(samplers)
    passes = 2 if true_cfg_scale != 1 else 1  # transformer evaluations per sample and step
    total = passes * (count * early_steps + (steps - early_steps))
    done = 0

    def report(evaluations: int) -> None:
        nonlocal done
        done += evaluations
        if progress is not None:
            progress(done, total)

    def counter(evaluations_per_step: int) -> Callable[[int, int], None]:
        return lambda _step, _total: report(passes * evaluations_per_step)

    with editor.task_conditioning(None if base.task is None else [base.task]):  # resolved once, by prepare
        # Early steps, in chunks of one sampler; keep each chunk's state so the winner can resume from it (a
        # state keeps the way it samples, so the winner finishes as it started).
        chunks, previews, where = [], [], []
        try:
            for sampler in samplers:
                editor.stochastic = sampler == "stochastic"
                for start in range(0, candidates, batch_size):
                    chunk = items[start : start + batch_size]
                    state = editor.start(chunk, steps=steps, guidance=guidance, true_cfg_scale=true_cfg_scale)
                    state = editor.sampler.run(state, until=early_steps, callback=counter(len(chunk)))
                    where += [(len(chunks), i) for i in range(len(chunk))]
                    chunks.append(state)
                    canvases = editor.sampler.decode_state(state)
                    previews += [editor.finish(it, c, feather=feather) for it, c in zip(chunk, canvases, strict=True)]
        finally:
            editor.stochastic = own == "stochastic"

        selection = select_best(judge, base.panel_source, previews, base.instruction, strategy=strategy, swap=swap)
        chunk_index, row = where[selection.index]
        winner = editor.sampler.run(chunks[chunk_index].select([row]), callback=counter(1))
    canvas = editor.sampler.decode_state(winner)[0]
    editor.pipe.maybe_free_model_hooks()
    image = editor.finish(items[selection.index % candidates], canvas, keep_size=keep_size, feather=feather)
    result = EarlyFilterResult(
        image=image,
        seed=seeds[selection.index % candidates],
        seeds=seeds * len(samplers),
        samplers=[m for m in samplers for _ in seeds],
        previews=previews,
        selection=selection,
        nfe=total,
        restart_nfe=passes * (count * early_steps + steps),
    )
    if save_candidates is not None:
        write_candidates(result, Path(save_candidates))
    return result


def write_candidates(result: EarlyFilterResult, folder: Path) -> None:
    """Previews as `candidate_{i}_seed{s}.png`, the final edit, and `selection.json` with the judge's reasons."""
    from ..images import save_image_atomic

    folder.mkdir(parents=True, exist_ok=True)
    for index, (seed, sampler, preview) in enumerate(zip(result.seeds, result.samplers, result.previews, strict=True)):
        save_image_atomic(preview, folder / f"candidate_{index}_seed{seed}_{sampler}.png")
    save_image_atomic(result.image, folder / "final.png")
    write_atomic(folder / "selection.json", json.dumps(result.summary(), indent=2))
