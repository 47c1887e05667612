"""Measurements in ShapesEdit: Emu Edit's task inversion curve and multi-turn drift, how well a base
model grounds its captions, and whether an edit model's output depends on the instruction's words.

(The task-embedding ablation is a pair of `diptych shapes bench` variants, `moe:no-task` and
`moe:true-task`.)

- `inversion_curve`: an adapter trained with every operation but one (`diptych train ... --task-embedding`
  on `diptych shapes make --exclude-ops OP` data) learns a vector for the held-out operation from k
  training examples (`diptych.emu.inversion.invert_task`, everything else frozen), and is scored on
  held-out test edits of that operation, for each k. k = 0 is the adapter with a zero vector for it.
- `multiturn_drift`: sessions of several local edits in a row (each turn's instruction is a real edit of
  the ground-truth scene so far), with and without Emu Edit's per-pixel thresholding between turns. Drift
  is the mean absolute RGB error, against the source, of the pixels that no turn was asked to change.
- `caption_grounding`: the base Fill model draws held-out scenes from their caption alone (the whole diptych
  masked); the left panel is scored against the render with the success rule's low-pass error. A base that
  cannot do this has no text grounding for edit adapters to build on (docs/shapes.md, Results).
- `region_losses`: the training objective's error on held-out edits at fixed noise levels, split into the
  source panel, the tokens of the edited panel the edit keeps, and the tokens it changes: whether a model
  fails at copying or at editing, without sampling.
- `token_probes`: linear probes, layer by layer, of what the image tokens know about the object under them
  (its shape, size and colour), in the visible source panel and at the same place in the panel to generate. An
  editor asked to change "the circle" must tell the circle's tokens from the others'.
- `text_sensitivity`: does the text reach the image? Held-out recolor edits, each re-worded with every colour
  word allowed for its object (same object, same seen phrasing template, `colour_variants`) and edited at one
  seed, the original wording also at a second seed. `words_l1` (mean absolute RGB difference between the
  outputs of two colour words, same seed) over `seeds_l1` (the same instruction at two seeds) is `ratio`:
  near 0 for a model that ignores its text, above 1 when the words move the output more than the noise does.
  Each output is also judged against the ground truth of its own colour word: `colour_hits` (the edited
  object's region within the success rule's inside threshold), `success` (the full rule) and `word_match`
  (its region is closer to its own word's target than to any other word's; chance is `word_match_chance`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image

from ..shapes_core.dataset import Example, sample_edit
from ..shapes_core.edits import Edit, as_unit_rgb, edit_region, get_op, judge_edit
from ..shapes_core.world import allowed_colors, referring_expression, render, token_objects

#: The token sets of `token_sets` and `region_losses`, in report order.
TOKEN_SETS: tuple[str, ...] = ("source", "kept", "edited")

#: Operations that leave part of the picture untouched (drift is measured on that part).
LOCAL_OPS: tuple[str, ...] = ("recolor", "reshape", "remove", "add", "move", "resize")


def inversion_curve(
    adapter: str,
    op: str,
    *,
    counts: Sequence[int] = (0, 1, 10, 100),
    n_eval: int = 100,
    inversion_steps: int = 200,
    lr: float = 2e-2,
    batch_size: int = 8,
    edit_steps: int = 28,
    base: str = "shapes",
    device: str | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Success on `n_eval` test edits of `op` after inverting a task vector from each number of examples."""
    from ..conditioning.tasks import SHAPES_TASKS, WHOLE_IMAGE_TASKS
    from ..editor import Editor, EditRequest
    from ..emu.inversion import invert_task
    from ..errors import InputError

    editor = Editor.from_pretrained(base, adapter=adapter, device=device)
    base_embedding = editor.task_embedding
    if base_embedding is None:
        raise InputError(f"{adapter} has no task embedding beside it: train it with --task-embedding")
    cases = [sample_edit("test", i, seed=seed, ops=[op], phrasings="all") for i in range(n_eval)]
    pool = [sample_edit("train", i, seed=seed, ops=[op]) for i in range(max(counts))]
    name = f"{op}-inverted"
    # An adapter that fills edit regions fills the whole image for an op that changes all of it, as the editor does
    # for the op's own task (WHOLE_IMAGE_TASKS); a new task's name is not in that list, and the locator, which
    # would otherwise choose the region, is not what the curve measures.
    everywhere = editor.fill_region == "edit" and SHAPES_TASKS[op] in WHOLE_IMAGE_TASKS

    def whole(case: Example) -> Image.Image | None:
        return Image.new("L", case.source_image.size, 255) if everywhere else None

    report: dict[str, Any] = {"adapter": str(adapter), "op": op, "n_eval": n_eval, "points": []}
    for count in counts:
        if count == 0:
            embedding, task = base_embedding, SHAPES_TASKS[op]  # never trained on `op`: a zero row
        else:
            examples = [(ex.source_image, ex.instruction, ex.target_image) for ex in pool[:count]]
            embedding = invert_task(
                editor,
                examples,
                name,
                steps=inversion_steps,
                lr=lr,
                base_embedding=base_embedding,
                batch_size=min(batch_size, count),
                resolution=editor.default_width,
                seed=seed,
            )
            task = name
        editor.use_task_embedding(embedding)
        outputs = editor.edit_many(
            [EditRequest(c.source_image, c.instruction, seed, whole(c), task) for c in cases], steps=edit_steps
        )
        scores = [judge_edit(out, c.edit) for out, c in zip(outputs, cases, strict=True)]
        point = {
            "examples": count,
            "success": float(np.mean([s.success for s in scores])),
            "l1": float(np.mean([s.l1 for s in scores])),
        }
        report["points"].append(point)
        if progress:
            progress(f"{count} examples: {100 * point['success']:.1f}% success")
    return report


def edit_chain(index: int, turns: int, *, seed: int = 0) -> list[Edit]:
    """`turns` local edits in a row, starting from test scene `index`: each applies to the previous target."""
    rng = np.random.default_rng([seed, index, turns])
    first = sample_edit("test", index, seed=seed, ops=LOCAL_OPS, phrasings="seen").edit
    chain = [first]
    while len(chain) < turns:
        scene = chain[-1].target
        names = [n for n in LOCAL_OPS if get_op(n).applicable(scene)]
        chain.append(get_op(names[int(rng.integers(len(names)))]).apply(scene, rng, "seen"))
    return chain


def multiturn_drift(
    n: int = 50,
    *,
    turns: int = 5,
    thresholds: Sequence[float | None] = (None, 0.03),
    base: str = "shapes",
    adapter: str | None = None,
    steps: int = 28,
    device: str | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Drift of the untouched pixels and per-turn success over `n` sessions of `turns` turns, for each
    per-pixel threshold (None: off)."""
    from ..editor import Editor

    editor = Editor.from_pretrained(base, adapter=adapter, device=device)
    chains = [edit_chain(i, turns, seed=seed) for i in range(n)]
    report: dict[str, Any] = {"sessions": n, "turns": turns, "steps": steps, "results": {}}
    for threshold in thresholds:
        drift = np.zeros((n, turns))
        success = np.zeros((n, turns), dtype=bool)
        for i, chain in enumerate(chains):
            source = render(chain[0].source, 64)
            source_rgb = as_unit_rgb(source)
            untouched = np.ones((64, 64), dtype=bool)
            session = editor.session(source, threshold=threshold, seed=seed, steps=steps)
            for turn, edit in enumerate(chain):
                image = session.edit(edit.instruction)
                untouched &= ~edit_region(edit, 64)
                error = np.abs(as_unit_rgb(image) - source_rgb).mean(axis=-1)
                drift[i, turn] = float(error[untouched].mean()) if untouched.any() else np.nan
                success[i, turn] = judge_edit(image, edit).success
            if progress:
                progress(1)
        key = "off" if threshold is None else f"alpha={threshold:g}"
        report["results"][key] = {
            "threshold": threshold,
            "drift_per_turn": [float(x) for x in np.nanmean(drift, axis=0)],
            "success_per_turn": [float(x) for x in success.mean(axis=0)],
            "all_turns_success": float(success.all(axis=1).mean()),
        }
    return report


def caption_grounding(
    base: str = "shapes", *, n: int = 16, steps: int = 28, seed: int = 0, device: str | None = None
) -> dict[str, Any]:
    """Caption-only generation of `n` test scenes by the bare base model: mean low-pass error of the drawn
    left panel against the scene's render, and the share within the success rule's inside threshold."""
    import torch

    from ..editor import Editor
    from ..shapes_core.dataset import scene_split
    from ..shapes_core.edits import T_INSIDE, error_map
    from ..shapes_core.world import caption, random_scene
    from .train_base import PRETRAIN_TEMPLATE

    editor = Editor.from_pretrained(base, adapter="none", device=device)
    size = editor.default_width
    rng = np.random.default_rng([seed, n])
    scenes = []
    while len(scenes) < n:
        scene = random_scene(rng)
        if scene_split(scene) == "test":
            scenes.append(scene)
    embeds, pooled = editor.encoder.encode([PRETRAIN_TEMPLATE.format(caption=caption(s)) for s in scenes])
    drawn = editor.pipe(
        prompt_embeds=embeds,
        pooled_prompt_embeds=pooled,
        image=[Image.new("RGB", (2 * size, size))] * n,
        mask_image=[Image.new("L", (2 * size, size), 255)] * n,
        height=size,
        width=2 * size,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
    ).images
    errors = [
        float(error_map(as_unit_rgb(image.crop((0, 0, size, size))), as_unit_rgb(render(scene, size))).mean())
        for image, scene in zip(drawn, scenes, strict=True)
    ]
    return {
        "base": base,
        "scenes": n,
        "mean_error": float(np.mean(errors)),
        "within_threshold": float(np.mean([e <= T_INSIDE for e in errors])),
    }


def token_sets(examples: Sequence[Any], size: int, cell: int) -> dict[str, np.ndarray]:
    """Boolean (batch, rows, 2 * rows) masks over a diptych's packed tokens (`cell` pixels square each, in
    row order): "source" (the left panel), "edited" (right-panel tokens with a pixel in the edit region of
    `example.edit`) and "kept" (the other right-panel tokens). The three partition the diptych."""
    grid = size // cell
    edited = np.zeros((len(examples), grid, 2 * grid), dtype=bool)
    for i, example in enumerate(examples):
        region = edit_region(example.edit, size).reshape(grid, cell, grid, cell)
        edited[i, :, grid:] = region.any(axis=(1, 3))
    right = np.zeros_like(edited)
    right[:, :, grid:] = True
    return {"source": ~right, "kept": right & ~edited, "edited": edited}


def _encode_diptychs(editor: Any, objective: Any, cases: Sequence[Example], generators: Sequence[Any]) -> tuple:
    """The ground-truth diptychs of `cases` as the training objective sees them, in the layout the editor's adapter
    was trained in (VAE draws from `generators`), and their ICEdit prompts encoded: (encoded batch, prompt
    embeddings, pooled embeddings)."""
    import torch

    from ..canvas import PanelSize
    from ..prompts import build_prompt
    from ..train.data import make_sample
    from ..train.stream import training_layout

    size = editor.default_width
    transformer = editor.pipe.transformer
    samples = [make_sample(c.source_image, c.instruction, c.target_image, mask=c.mask_image) for c in cases]
    layouts = [
        training_layout(s, PanelSize(size, size), fill_region=editor.fill_region, token=objective.pixel_multiple)
        for s in samples
    ]
    with torch.no_grad():
        encoded = objective.encode(
            [canvas for canvas, _ in layouts],
            [mask for _, mask in layouts],
            generators,
            device=transformer.device,
            dtype=transformer.dtype,
        )
        embeds, pooled = editor.encoder.encode([build_prompt(c.instruction) for c in cases])
    return encoded, embeds, pooled


def _velocity_error(
    editor: Any, objective: Any, cases: Sequence[Example], inputs: tuple, t: float, generators: Sequence[Any]
) -> Any:
    """The objective's per-token velocity error of `cases` (`inputs` from `_encode_diptychs`) at noise level
    `t`, with fresh noise from `generators` and the true tasks when the editor has task vectors."""
    import torch

    from ..conditioning.tasks import SHAPES_TASKS

    encoded, embeds, pooled = inputs
    transformer = editor.pipe.transformer
    noise = torch.stack([torch.randn(encoded.x0.shape[1:], generator=g) for g in generators])
    tasks = [SHAPES_TASKS[c.task] for c in cases] if editor.task_embedding is not None else None
    with torch.no_grad(), editor.task_conditioning(tasks):
        velocity = objective.velocity(
            transformer,
            encoded,
            embeds,
            pooled,
            torch.full((len(cases),), float(t)),
            noise,
            guidance_embeds=bool(transformer.config.guidance_embeds),
        )
    return objective.squared_error(velocity, encoded, noise)


def region_losses(
    adapter: str | None = "moe",
    *,
    n: int = 64,
    times: Sequence[float] = (0.3, 0.6, 0.9),
    base: str = "shapes",
    batch_size: int = 16,
    device: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean squared velocity error of the flow-matching objective on `n` held-out test edits (ground-truth
    diptychs, the ICEdit prompt, the true task when the adapter has task vectors), at each time in `times`,
    over three sets of tokens: the source panel, the edited panel's tokens with no edited pixel ("kept") and
    those with one ("edited"). The same noise and VAE draws for every model, so reports compare."""
    import torch

    from ..editor import Editor
    from ..errors import InputError
    from ..train.objective import FlowMatchingObjective

    if not times or any(not 0.0 <= t <= 1.0 for t in times):
        raise InputError(f"noise levels must lie in [0, 1], got {list(times)}")
    editor = Editor.from_pretrained(base, adapter=adapter, device=device)
    objective = FlowMatchingObjective(editor.pipe, masked_content=editor.sampler.masked_content)
    size, cell = editor.default_width, objective.pixel_multiple
    cases = [sample_edit("test", i, seed=seed, phrasings="all") for i in range(n)]
    sums = {t: dict.fromkeys(TOKEN_SETS, 0.0) for t in times}
    counts = dict.fromkeys(TOKEN_SETS, 0)
    for start in range(0, n, batch_size):
        chunk = cases[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed * 1_000_003 + start + i) for i in range(len(chunk))]
        encoded_inputs = _encode_diptychs(editor, objective, chunk, generators)
        sets = {k: torch.from_numpy(v.reshape(len(chunk), -1)) for k, v in token_sets(chunk, size, cell).items()}
        for k, v in sets.items():
            counts[k] += int(v.sum())
        for t in times:
            error = _velocity_error(editor, objective, chunk, encoded_inputs, t, generators).cpu()
            for k, v in sets.items():
                sums[t][k] += float(error[v].sum())
    return {
        "base": base,
        "adapter": adapter,
        "edits": n,
        "points": [{"t": t, **{k: sums[t][k] / max(counts[k], 1) for k in counts}} for t in times],
    }


#: Object attributes `token_probes` decodes from the image tokens.
PROBED_ATTRIBUTES: tuple[str, ...] = ("shape", "size", "color")


def token_probes(
    adapter: str | None = "none",
    *,
    n_fit: int = 512,
    n_eval: int = 256,
    t: float = 0.95,
    base: str = "shapes",
    batch_size: int = 16,
    device: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """What the transformer's image tokens know about the object under them, layer by layer: linear probes
    (logistic regression) fit on `n_fit` training edits and scored on `n_eval` held-out test edits.

    Each edit's ground-truth diptych goes through the transformer once at noise level `t` (the ICEdit prompt,
    the true task when the adapter has task vectors). A token is labelled with the source scene's object that
    covers at least 40% of its pixels (tokens over background are left out), in the left panel (the source,
    visible) and at the same place in the right panel (to be generated). For each attribute in
    `PROBED_ATTRIBUTES` and each panel: the accuracy of a probe on the tokens after the `x_embedder` and after
    every block, beside `chance` (the most frequent label). An editor that must change "the circle" needs to
    know, at the circle's tokens, that they are a circle: a probe at chance says it does not."""
    import torch

    from ..editor import Editor
    from ..errors import InputError
    from ..train.objective import FlowMatchingObjective

    if not 0.0 <= t <= 1.0:
        raise InputError(f"the noise level must lie in [0, 1], got {t}")
    if n_fit < 1 or n_eval < 1:
        raise InputError(f"--n-fit and --n-eval must be at least 1, got {n_fit} and {n_eval}")
    editor = Editor.from_pretrained(base, adapter=adapter, device=device)
    objective = FlowMatchingObjective(editor.pipe, masked_content=editor.sampler.masked_content)
    transformer = editor.pipe.transformer
    size, cell = editor.default_width, objective.pixel_multiple
    grid = size // cell
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    layers = ["embed", *(f"block {i}" for i in range(len(blocks)))]
    captured: dict[str, torch.Tensor] = {}
    hooks = [transformer.x_embedder.register_forward_hook(lambda _m, _i, out: captured.update(embed=out))]
    for i, block in enumerate(blocks):  # each block returns (text stream, image stream)
        hooks.append(block.register_forward_hook(lambda _m, _i, out, i=i: captured.update({f"block {i}": out[1]})))

    def collect(split: str, n: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
        cases = [sample_edit(split, i, seed=seed, phrasings=None if split == "train" else "all") for i in range(n)]
        features: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
        labels: dict[str, list[str]] = {attr: [] for attr in PROBED_ATTRIBUTES}
        panels: list[int] = []
        for start in range(0, n, batch_size):
            chunk = cases[start : start + batch_size]
            generators = [torch.Generator().manual_seed(seed * 1_000_003 + start + i) for i in range(len(chunk))]
            inputs = _encode_diptychs(editor, objective, chunk, generators)
            _velocity_error(editor, objective, chunk, inputs, t, generators)  # the hooks keep the image stream
            for row, case in enumerate(chunk):
                scene = case.source_scene
                owner = token_objects(scene, size, cell)
                for r, c in zip(*np.nonzero(owner >= 0), strict=True):
                    obj = scene.objects[owner[r, c]]
                    for panel in (0, 1):
                        token = r * 2 * grid + panel * grid + c
                        for layer in layers:
                            features[layer].append(captured[layer][row, token].float().cpu().numpy())
                        for attr in PROBED_ATTRIBUTES:
                            labels[attr].append(getattr(obj, attr))
                        panels.append(panel)
        return (
            {layer: np.stack(v) for layer, v in features.items()},
            {attr: np.array(v) for attr, v in labels.items()},
            np.array(panels),
        )

    try:
        fit_x, fit_y, fit_panel = collect("train", n_fit)
        eval_x, eval_y, eval_panel = collect("test", n_eval)
    finally:
        for hook in hooks:
            hook.remove()
    probes: dict[str, Any] = {}
    for attr in PROBED_ATTRIBUTES:
        for panel, name in ((0, "left"), (1, "right")):
            fit, held = fit_panel == panel, eval_panel == panel
            classes = sorted(set(fit_y[attr][fit]) | set(eval_y[attr][held]))
            y_fit = np.array([classes.index(v) for v in fit_y[attr][fit]])
            y_eval = np.array([classes.index(v) for v in eval_y[attr][held]])
            probes[f"{attr}/{name}"] = {
                "chance": float(np.bincount(y_eval).max() / len(y_eval)),
                "accuracy": {
                    layer: linear_probe_accuracy(fit_x[layer][fit], y_fit, eval_x[layer][held], y_eval, len(classes))
                    for layer in layers
                },
            }
    return {
        "base": base,
        "adapter": adapter,
        "t": t,
        "tokens": {"fit": int((fit_panel == 0).sum()), "eval": int((eval_panel == 0).sum())},  # per panel
        "layers": layers,
        "probes": probes,
    }


def linear_probe_accuracy(
    x_fit: np.ndarray, y_fit: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray, classes: int, *, steps: int = 300
) -> float:
    """Accuracy on (x_eval, y_eval) of a multinomial logistic regression fit on standardized (x_fit, y_fit)
    (full-batch Adam, light weight decay, a fixed seed: the same inputs give the same figure)."""
    import torch

    mean, std = x_fit.mean(axis=0), x_fit.std(axis=0) + 1e-5
    fit = torch.from_numpy((x_fit - mean) / std).float()
    held = torch.from_numpy((x_eval - mean) / std).float()
    targets = torch.from_numpy(y_fit).long()
    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(fit.shape[1], classes, generator=generator) * 0.01)
    bias = torch.nn.Parameter(torch.zeros(classes))
    optimizer = torch.optim.Adam([weight, bias], lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(fit @ weight + bias, targets).backward()
        optimizer.step()
    with torch.no_grad():
        predicted = (held @ weight + bias).argmax(dim=1).numpy()
    return float((predicted == y_eval).mean())


def colour_variants(edit: Edit, *, max_words: int = 8) -> list[Edit]:
    """The recolor `edit` once per colour its object may take (the background's `allowed_colors` but the
    object's own, in palette order, at most `max_words`): the same object, referring expression and phrasing
    template; only the colour word, `params["new_color"]` and the ground-truth target change. The variant
    with the edit's own colour word equals `edit`."""
    from ..errors import InputError

    if edit.op != "recolor":
        raise InputError(f"colour variants need a recolor edit, got a {edit.op!r} edit")
    index = edit.params["object"]
    obj = edit.source.objects[index]
    template = get_op("recolor").phrasings[edit.phrasing_index]
    name = referring_expression(edit.source, index)
    words = [c for c in allowed_colors(edit.source.background) if c != obj.color][:max_words]
    variants = []
    for word in words:
        objects = list(edit.source.objects)
        objects[index] = obj.replace(color=word)
        variants.append(
            replace(
                edit,
                target=edit.source.with_objects(objects),
                params={**edit.params, "new_color": word},
                instruction=template.format(obj=name, new_color=word),
            )
        )
    return variants


def text_sensitivity_cases(n: int = 8, *, seed: int = 0) -> list[tuple[Example, list[Edit]]]:
    """The `n` held-out recolor edits (seen phrasings) of `text_sensitivity`, each with its colour variants."""
    from ..errors import InputError

    if n < 1:
        raise InputError(f"n (test scenes) must be at least 1, got {n}")
    cases = [sample_edit("test", i, seed=seed, ops=["recolor"], phrasings="seen") for i in range(n)]
    return [(case, colour_variants(case.edit)) for case in cases]


def text_sensitivity(
    adapter: str | None = "moe",
    *,
    n: int = 8,
    base: str = "shapes",
    steps: int = 28,
    seed: int = 0,
    batch_size: int = 16,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Whether the model's output depends on the words of the instruction (see the module docstring).

    Every colour variant of each case of `text_sensitivity_cases(n, seed=seed)` is edited at `seed`, and the
    variant with the case's own colour word once more at `seed + 1`, in batches of `batch_size`; a model with
    task vectors gets the true task (recolor's), so only the words differ between variants. Images are RGB in
    0..1; `words_l1` averages, per scene, over all pairs of colour words, then over scenes. `progress(k)` is
    called with the number of edits each batch finished."""
    from ..conditioning.tasks import SHAPES_TASKS
    from ..editor import Editor, EditRequest
    from ..errors import InputError

    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    cases = text_sensitivity_cases(n, seed=seed)
    editor = Editor.from_pretrained(base, adapter=adapter, device=device)
    task = SHAPES_TASKS["recolor"] if editor.task_embedding is not None else None
    requests = []
    for case, variants in cases:
        source = case.source_image
        requests += [EditRequest(source, v.instruction, seed, task=task) for v in variants]
        requests.append(EditRequest(source, case.instruction, seed + 1, task=task))
    outputs = []
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        outputs += editor.edit_many(chunk, steps=steps, batch_size=batch_size)
        if progress:
            progress(len(chunk))
    per_scene, hits, successes, matches, chance = [], [], [], [], []
    offset = 0
    for case, variants in cases:
        images = outputs[offset : offset + len(variants) + 1]
        offset += len(variants) + 1
        rgb = np.stack([as_unit_rgb(image) for image in images])
        k = len(variants)
        pairs = [float(np.abs(rgb[a] - rgb[b]).mean()) for a in range(k) for b in range(a + 1, k)]
        own = next(a for a, v in enumerate(variants) if v.instruction == case.instruction)
        # inside error of output a against the target of word b (the edit region is the same for every word)
        scores = [[judge_edit(images[a], variants[b]) for b in range(k)] for a in range(k)]
        inside = np.array([[score.inside_error for score in row] for row in scores])
        hits += [scores[a][a].inside_ok for a in range(k)]
        successes += [scores[a][a].success for a in range(k)]
        matches += [int(np.argmin(inside[a])) == a for a in range(k)]
        chance += [1 / k] * k
        per_scene.append(
            {
                "index": case.index,
                "instruction": case.instruction,
                "words": [v.params["new_color"] for v in variants],
                "words_l1": float(np.mean(pairs)) if pairs else None,
                "seeds_l1": float(np.abs(rgb[own] - rgb[-1]).mean()),
            }
        )
    words = [s["words_l1"] for s in per_scene if s["words_l1"] is not None]
    words_l1 = float(np.mean(words)) if words else None
    seeds_l1 = float(np.mean([s["seeds_l1"] for s in per_scene]))
    return {
        "base": base,
        "adapter": adapter,
        "scenes": n,
        "variants": len(hits),
        "steps": steps,
        "seed": seed,
        "words_l1": words_l1,
        "seeds_l1": seeds_l1,
        "ratio": words_l1 / seeds_l1 if words_l1 is not None and seeds_l1 > 0 else None,
        "colour_hits": float(np.mean(hits)),
        "success": float(np.mean(successes)),
        "word_match": float(np.mean(matches)),
        "word_match_chance": float(np.mean(chance)),
        "per_scene": per_scene,
    }
