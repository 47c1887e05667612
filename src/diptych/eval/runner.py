"""The `diptych eval` runner: edit (or read) every benchmark sample, score it, log it, resume, shard, merge.

Output folder layout::

    DIR/run.json                 settings of the run; a rerun with other settings is refused
    DIR/samples.jsonl            one JSON object per finished sample (single process)
    DIR/samples.rank{r}.jsonl    the same, per shard / process when the run is split
    DIR/images/{id}.png          edited images ({id}.turn{k}.png: intermediate turns of chained sessions)
    DIR/thumbs/{id}.{source,edit,target}.jpg   thumbnails for index.html
    DIR/report.md, report.csv, index.html, summary.json   written once every sample is finished

Resuming: each finished sample is appended to its JSONL with a single `os.write` of the whole line,
followed by `fsync`; a reader ignores a last line without its newline (a write cut short), and a writer
cuts such a tail off before appending. A rerun reads every samples*.jsonl in the folder and skips the
ids it finds, so a run may be resumed with another number of processes. Samples that failed (a corrupt
image, an unreachable judge) are logged with their error and skipped too, unless `retry_failed`.

Sharding: with `shard=(i, n)`, or when started by `accelerate launch` / `torchrun` (WORLD_SIZE > 1),
a process takes every n-th sample from i. Under accelerate the processes meet at a barrier and rank 0
writes the report; separate `--shard` runs write it from whichever run finds all samples finished, or
later with `merge_run` (`diptych eval --merge --out DIR`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import DiptychError
from ..files import JsonlLog, complete_lines, write_atomic
from ..images import save_image_atomic
from .benchmarks import (
    IMAGE_SUFFIXES,
    Benchmark,
    FileImage,
    ImageRef,
    Sample,
    load_benchmark,
    select_samples,
    shard_samples,
)
from .scoring import (
    CLIP_METRICS,
    DEFAULT_CLIP,
    DEFAULT_DINO,
    VIE_METRICS,
    EvalError,
    Scorers,
    Scoring,
    build_vie_scorer,
    compute_metrics,
)

__all__ = [
    "DEFAULT_CLIP",
    "DEFAULT_DINO",
    "EvalConfig",
    "EvalError",
    "EvalResult",
    "SampleLog",
    "Scorers",
    "build_vie_scorer",
    "compute_metrics",
    "merge_run",
    "read_records",
    "run_evaluation",
]

RUN_FILE = "run.json"
SAMPLES_FILE = "samples.jsonl"
THUMB_SIZE = 256


# ------------------------------------------------------------------------------------------------ config


@dataclass
class EvalConfig:
    """Everything `run_evaluation` needs; the CLI fills it from its options."""

    benchmark: str
    data: str
    out: str
    # which samples
    split: str = "test"
    protocol: str = "all-turn"
    languages: tuple[str, ...] = ("en",)
    caption_filter: bool = True
    tasks: tuple[str, ...] | None = None
    subset: int | None = None
    shard: tuple[int, int] | None = None
    metrics: tuple[str, ...] | None = None
    # where the edits come from: a model (base [+ lora]) or a folder of predictions
    base: str | None = None
    lora: str | None = None
    lora_scale: float = 1.0
    moe_dispatch: str = "dense"
    cache: str | None = None  # speed modes (diptych.speed): they change results, so they are run settings
    quantize: str | None = None
    compile: bool = False
    gguf: str | None = None
    device: str | None = None
    dtype: str | None = None
    offload: str = "none"
    local_files_only: bool = False
    steps: int = 28
    guidance: float = 50.0
    seed: int = 42
    width: int | None = None
    template: str | None = None
    batch_size: int = 4
    predictions: str | None = None
    # scorers
    clip: str = DEFAULT_CLIP
    dino: str = DEFAULT_DINO
    judge: str | None = None
    retry_failed: bool = False
    quiet: bool = True

    def validate(self) -> None:
        if self.base and self.predictions:
            raise EvalError(
                "give either --base MODEL (edit the samples) or --predictions DIR (score outputs), not both"
            )
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EvalError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.width is not None and self.width < 1:
            raise EvalError(f"width must be positive, got {self.width}")


@dataclass
class EvalResult:
    """What a run did: samples selected (all processes), finished so far, computed here, report written."""

    out: Path
    selected: int
    finished: int
    computed: int
    report: Path | None = None
    errors: int = 0
    files: dict[str, Path] = field(default_factory=dict)


# -------------------------------------------------------------------------------------------- sample log


class SampleLog(JsonlLog):
    """The append-only JSONL file of finished samples (`diptych.files.JsonlLog`: locked, torn tail cut,
    one write per line)."""

    def __init__(self, path: str | os.PathLike[str]):
        busy = "wait for it to finish or use another --out"
        super().__init__(path, error=EvalError, writer="diptych eval", busy=busy)


def sample_files(out: Path) -> list[Path]:
    """samples.jsonl and samples.rank*.jsonl in `out` (rank files by rank number)."""
    files = [out / SAMPLES_FILE] if (out / SAMPLES_FILE).is_file() else []

    def rank(p: Path) -> tuple[int, str]:
        middle = p.name[len("samples.rank") : -len(".jsonl")]
        return (int(middle) if middle.isdigit() else 1 << 30, p.name)

    return files + sorted(out.glob("samples.rank*.jsonl"), key=rank)


def read_records(out: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Finished samples by id from every samples*.jsonl in `out`.

    A last line without its newline (an interrupted write) and lines that are not JSON objects with an
    id are ignored. When an id occurs more than once, a record without an error replaces one with an error
    (a retried sample); otherwise the first one is kept.
    """
    records: dict[str, dict[str, Any]] = {}
    for file in sample_files(Path(out)):
        for _, line in complete_lines(file):
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                continue
            old = records.get(record["id"])
            if old is None or (old.get("error") and not record.get("error")):
                records[record["id"]] = record
    return records


# ---------------------------------------------------------------------------------------------- scorers


# ------------------------------------------------------------------------------------------- processes


@dataclass
class _Processes:
    """This process's place in a distributed launch (rank 0 of 1 when not launched by accelerate/torchrun)."""

    rank: int = 0
    world: int = 1
    state: Any = None

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    @property
    def device(self) -> str | None:
        return str(self.state.device) if self.state is not None else None


def _processes(cpu: bool) -> _Processes:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _Processes()
    from accelerate import PartialState

    state = PartialState(cpu=cpu)
    return _Processes(state.process_index, state.num_processes, state)


# ----------------------------------------------------------------------------------------------- running


def _resolve_metrics(requested: Sequence[str] | None, bench: Benchmark) -> tuple[str, ...]:
    if not requested:
        return bench.metrics
    unknown = [m for m in requested if m not in bench.metrics]
    if unknown:
        raise EvalError(f"{bench.name} has no metric {', '.join(unknown)}; choose from {', '.join(bench.metrics)}")
    return tuple(m for m in bench.metrics if m in requested)


def _mode(config: EvalConfig, samples: Sequence[Sample]) -> str:
    if config.predictions:
        if not Path(config.predictions).is_dir():
            raise EvalError(f"predictions folder {config.predictions} does not exist")
        return "predictions"
    if config.base:
        return "edit"
    if samples and all(s.prediction is not None for s in samples):
        return "embedded"  # a generations file: its edited images are scored
    raise EvalError("say where the edits come from: --base MODEL [--lora ADAPTER] or --predictions DIR")


def _settings(config: EvalConfig, bench: Benchmark, metrics: Sequence[str], mode: str) -> dict[str, Any]:
    """The options that change results; a rerun in the same folder must match them."""
    settings: dict[str, Any] = {
        "benchmark": bench.name,
        "data": str(bench.path or Path(config.data).resolve()),
        "tasks": list(config.tasks) if config.tasks else None,
        "subset": config.subset,
        "metrics": list(metrics),
        "mode": mode,
        **{k: v for k, v in bench.info.items() if k != "model"},
    }
    if mode == "edit":
        names = ("base", "lora", "lora_scale", "moe_dispatch", "steps", "guidance", "seed", "width", "template")
        for name in names:
            settings[name] = getattr(config, name)
        for name in ("cache", "quantize", "gguf"):  # recorded when used, so older runs still resume
            if getattr(config, name):
                settings[name] = getattr(config, name)
    if mode == "predictions":
        settings["predictions"] = str(Path(config.predictions).resolve())  # type: ignore[arg-type]
    if set(metrics) & CLIP_METRICS:
        settings["clip"] = config.clip
    if "dino" in metrics:
        settings["dino"] = config.dino
    if set(metrics) & VIE_METRICS:
        settings["judge"] = config.judge
    return settings


def _model_label(config: EvalConfig, bench: Benchmark, mode: str) -> str:
    if mode == "edit":
        name = Path(str(config.base)).name or str(config.base)
        return f"{name} + {Path(config.lora).name}" if config.lora else name
    if mode == "predictions":
        return Path(str(config.predictions)).resolve().name
    return str(bench.info.get("model") or "generations")


def _check_run_file(out: Path, run: dict[str, Any]) -> bool:
    """Refuse an output folder that holds a run with other settings; True when run.json is still to write."""
    path = out / RUN_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise EvalError(f"{path} is unreadable ({err}); delete it or use another --out") from err
        before, now = old.get("settings", {}), run["settings"]
        changed = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
        if changed:
            detail = "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
            raise EvalError(f"{out} holds a run with other settings ({detail}); use another --out to start a new run")
        return False
    return True


def run_evaluation(
    config: EvalConfig,
    *,
    editor: Any = None,
    scorers: Scorers | None = None,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
) -> EvalResult:
    """Run (or resume) an evaluation and write the reports once every selected sample is finished.

    `editor` (a `diptych.editor.Editor`) replaces loading `config.base`; `scorers` replaces the metric
    models; `stop_after` stops after that many new samples in this process (to test interruptions).
    """
    say = log or (lambda text: print(text, file=sys.stderr))
    config.validate()
    bench = load_benchmark(
        config.benchmark,
        config.data,
        split=config.split,
        protocol=config.protocol,
        languages=config.languages,
        caption_filter=config.caption_filter,
    )
    metrics = _resolve_metrics(config.metrics, bench)
    selected = select_samples(bench.samples, tasks=config.tasks, subset=config.subset)
    mode = _mode(config, selected)
    procs = _processes(cpu=config.device == "cpu")
    if config.shard is not None and procs.world > 1:
        raise EvalError("--shard splits the work between separate runs; under accelerate/torchrun leave it out")
    shard = config.shard or ((procs.rank, procs.world) if procs.world > 1 else None)

    out = Path(config.out)
    run = {
        "settings": _settings(config, bench, metrics, mode),
        "benchmark": bench.name,
        "metrics": list(metrics),
        "selected": len(selected),
        "dropped": bench.dropped,
        "info": bench.info,
        "model": _model_label(config, bench, mode),
        "tasks": list(dict.fromkeys(s.task for s in selected)),
    }
    write_run_file = _check_run_file(out, run)

    done = read_records(out) if out.is_dir() else {}
    order = {s.id: i for i, s in enumerate(selected)}
    mine = shard_samples(selected, *shard) if shard else selected
    todo = [s for s in mine if s.id not in done or (config.retry_failed and done[s.id].get("error"))]
    if stop_after is not None:
        todo = todo[: max(0, stop_after)]
    producer = _Producer(config, mode, editor, procs)
    scorer = scorers or Scorers(
        clip=config.clip, dino=config.dino, judge=config.judge, device=config.device or procs.device
    )
    if todo:
        # Load the metric models and the edit model now: a bad name fails before anything is written.
        scorer.prepare(bench.scoring, metrics)
        if mode == "edit":
            producer.editor  # noqa: B018
    out.mkdir(parents=True, exist_ok=True)
    if write_run_file:
        write_atomic(out / RUN_FILE, json.dumps(run, indent=2, sort_keys=True, default=str) + "\n")
    log_name = f"samples.rank{shard[0]}.jsonl" if shard else SAMPLES_FILE
    computed = 0
    if todo:
        say(f"{bench.name}: {len(todo)} sample(s) to do here, {len(mine) - len(todo)} already finished")
        with _progress(len(todo), config.quiet or procs.rank != 0) as progress, SampleLog(out / log_name) as sink:
            for start in range(0, len(todo), config.batch_size):
                chunk = todo[start : start + config.batch_size]
                began = time.perf_counter()
                produced = producer.produce(chunk)
                judged = bench.scoring.judge_batch(chunk, produced, metrics, scorer)
                seconds = (time.perf_counter() - began) / len(chunk)
                for sample, result, verdict in zip(chunk, produced, judged, strict=True):
                    record = _finish(
                        bench.scoring, sample, order[sample.id], result, metrics, scorer, out, mode, seconds, verdict
                    )
                    sink.append(record)
                    computed += 1
                    progress.update(1)
    procs.barrier()

    records = read_records(out)
    finished = sum(1 for s in selected if s.id in records)
    result = EvalResult(out, len(selected), finished, computed)
    if procs.rank == 0:
        if finished == len(selected):
            result.files = _write_reports(out, run, [records[s.id] for s in selected])
            result.report = result.files.get("markdown")
            result.errors = sum(1 for s in selected if records[s.id].get("error"))
            say(f"report written to {result.report}")
        else:
            say(
                f"{finished} of {len(selected)} samples finished; the report is written when all are done "
                f"(or now, partially, with: diptych eval --merge --out {out})"
            )
    procs.barrier()
    return result


def merge_run(out: str | os.PathLike[str], *, log: Callable[[str], None] | None = None) -> EvalResult:
    """Write the reports of the run in `out` from every samples*.jsonl there (finished or not)."""
    say = log or (lambda text: print(text, file=sys.stderr))
    folder = Path(out)
    path = folder / RUN_FILE
    if not path.is_file():
        raise EvalError(f"{folder} holds no diptych eval run ({RUN_FILE} not found); check --out")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise EvalError(f"{path} is unreadable ({err})") from err
    records = sorted(read_records(folder).values(), key=lambda r: (r.get("order", 1 << 62), r["id"]))
    files = _write_reports(folder, run, records)
    errors = sum(1 for r in records if r.get("error"))
    say(f"merged {len(records)} of {run.get('selected', '?')} samples; report written to {files['markdown']}")
    return EvalResult(folder, int(run.get("selected", len(records))), len(records), 0, files["markdown"], errors, files)


def _write_reports(out: Path, run: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Path]:
    from .report import write_reports

    return write_reports(out, run, records)


def _progress(total: int, quiet: bool) -> Any:
    """A tqdm bar over samples (disabled when quiet), used as a context manager."""
    from tqdm import tqdm

    return tqdm(total=total, unit="sample", dynamic_ncols=True, disable=quiet)


# --------------------------------------------------------------------------------------------- producing


@dataclass
class _Produced:
    """A sample's inputs and outputs: the loaded source, the turn outputs (the last is scored), or an error."""

    source: Image.Image | None = None
    outputs: list[Image.Image] = field(default_factory=list)
    edit_file: Path | None = None  # a prediction file that already exists
    error: str | None = None


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


class _Producer:
    """Makes the edited images of a chunk of samples: with the Editor, or from predictions."""

    def __init__(self, config: EvalConfig, mode: str, editor: Any, procs: _Processes):
        self.config, self.mode, self._editor, self.procs = config, mode, editor, procs

    @property
    def editor(self) -> Any:
        if self._editor is None:
            from ..editor import Editor

            cfg = self.config
            self._editor = Editor.from_pretrained(
                cfg.base,  # type: ignore[arg-type]
                adapter=cfg.lora,
                adapter_scale=cfg.lora_scale,
                device=cfg.device or self.procs.device,
                dtype=cfg.dtype,
                offload=cfg.offload,
                local_files_only=cfg.local_files_only,
                moe_dispatch=cfg.moe_dispatch,
                cache=cfg.cache,
                quantize=cfg.quantize,
                compile=cfg.compile,
                gguf=cfg.gguf,
            )
        return self._editor

    def produce(self, samples: Sequence[Sample]) -> list[_Produced]:
        results = []
        for sample in samples:
            try:
                results.append(_Produced(source=sample.source.load()))
            except DiptychError as err:
                results.append(_Produced(error=_error_text(err)))
        if self.mode == "edit":
            self._edit(samples, results)
        else:
            for sample, result in zip(samples, results, strict=True):
                if result.error is None:
                    self._read_prediction(sample, result)
        return results

    def _read_prediction(self, sample: Sample, result: _Produced) -> None:
        ref = sample.prediction if self.mode == "embedded" else _find_prediction(Path(self.config.predictions), sample)
        if ref is None:
            names = ", ".join([f"{sample.id}.png", *sample.prediction_names])
            result.error = f"MissingPrediction: no file {names} in {self.config.predictions}"
            return
        try:
            result.outputs.append(ref.load())
            result.edit_file = ref.path
        except DiptychError as err:
            result.error = _error_text(err)

    def _edit(self, samples: Sequence[Sample], results: list[_Produced]) -> None:
        """Edit turn by turn: turn t of every active sample in one `edit_many` call, the input of turn t > 0
        being the sample's own output of turn t - 1 (chained sessions)."""
        from ..editor import EditRequest

        turns = max(len(s.instructions) for s in samples)
        for t in range(turns):
            active = [i for i, s in enumerate(samples) if results[i].error is None and len(s.instructions) > t]
            if not active:
                break
            requests = [
                EditRequest(
                    results[i].source if t == 0 else results[i].outputs[-1],
                    samples[i].instructions[t],
                    self.config.seed,
                )
                for i in active
            ]
            for i, output in zip(active, self._edit_many(requests), strict=True):
                if isinstance(output, BaseException):
                    results[i].error = _error_text(output)
                else:
                    results[i].outputs.append(output)

    def _edit_many(self, requests: list[Any]) -> list[Image.Image | BaseException]:
        cfg = self.config
        options = {
            "steps": cfg.steps,
            "guidance": cfg.guidance,
            "width": cfg.width,
            "template": cfg.template,
            "batch_size": cfg.batch_size,
        }
        from ..editor import edit_many_isolated

        return edit_many_isolated(self.editor, requests, **options)  # a failing sample fails alone


def _find_prediction(folder: Path, sample: Sample) -> ImageRef | None:
    """`{id}.png` (or .jpg, .jpeg, .webp) in the folder or its images/ subfolder, then the benchmark's
    official names (`sample.prediction_names`)."""
    for base in (folder, folder / "images"):
        for suffix in IMAGE_SUFFIXES:
            candidate = base / f"{sample.id}{suffix}"
            if candidate.is_file():
                return FileImage(candidate, f"prediction {sample.id}")
    for name in sample.prediction_names:
        candidate = folder / name
        if candidate.is_file():
            return FileImage(candidate, f"prediction {sample.id}")
    return None


# -------------------------------------------------------------------------------------------- recording


def _thumbnail(image: Image.Image, path: Path) -> None:
    small = image.copy()
    small.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BICUBIC)
    save_image_atomic(small, path, quality=85)


def _relative(path: Path, out: Path) -> str:
    return Path(os.path.relpath(path.resolve(), out.resolve())).as_posix()


def _finish(
    scoring: Scoring,
    sample: Sample,
    order: int,
    produced: _Produced,
    metrics: Sequence[str],
    scorers: Scorers,
    out: Path,
    mode: str,
    seconds: float,
    judged: Any = None,
) -> dict[str, Any]:
    """Save the images of one sample, score it, and return its log record."""
    record: dict[str, Any] = {
        "id": sample.id,
        "order": order,
        "task": sample.task,
        "instructions": list(sample.instructions),
        "meta": sample.meta,
        "images": {},
        "metrics": {},
        "error": produced.error,
        "seconds": round(seconds, 4),
    }
    images: dict[str, str] = record["images"]
    thumbs = out / "thumbs"
    target = None
    try:
        if produced.source is not None:
            _thumbnail(produced.source, thumbs / f"{sample.id}.source.jpg")
            images["source"] = f"thumbs/{sample.id}.source.jpg"
        if sample.target is not None:
            target = sample.target.load()
            _thumbnail(target, thumbs / f"{sample.id}.target.jpg")
            images["target"] = f"thumbs/{sample.id}.target.jpg"
        if produced.error is None:
            edited = produced.outputs[-1]
            if mode == "edit":
                for k, turn_output in enumerate(produced.outputs[:-1], start=1):
                    save_image_atomic(turn_output, out / "images" / f"{sample.id}.turn{k}.png")
                save_image_atomic(edited, out / "images" / f"{sample.id}.png")
                images["edit"] = f"images/{sample.id}.png"
            elif produced.edit_file is not None:
                images["edit"] = _relative(produced.edit_file, out)
            _thumbnail(edited, thumbs / f"{sample.id}.edit.jpg")
            images["edit_thumb"] = f"thumbs/{sample.id}.edit.jpg"
            if isinstance(judged, BaseException):
                raise judged
            record["metrics"] = compute_metrics(
                scoring, sample, edited, metrics, scorers, source=produced.source, target=target, judged=judged
            )
    except DiptychError as err:
        record["error"] = _error_text(err)
    return record
