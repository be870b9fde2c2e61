"""``python -m vau predict``: run a checkpoint or a local model on an annotation file or a folder of videos.

    python -m vau predict ckpt=last conf=demo task=qa annotations=data/demo/test.csv out=preds.jsonl
    python -m vau predict backbone=qwen2_5_vl backbone.path=/models/Qwen2.5-VL-3B-Instruct \\
        videos=/data/clips task=tag out=tag.jsonl data.eval_batch_size=4

Model: ``ckpt=PATH`` (a Lightning checkpoint of a run; its ``config.yaml`` rebuilds the backbone, LoRA included),
``ckpt=last`` (the newest run of the experiment ``conf=`` names), or no checkpoint: the backbone of the composed
config as it is (``backbone.path=`` for a local Hugging Face folder).

Inputs: ``annotations=FILE`` (every row the task keeps for evaluation), or ``videos=DIR`` (every video file below
it, any container the decoder reads). On raw videos the tasks without a ground truth run as they are (tag, cls,
cls_binary, describe, and plugin tasks); ``qa`` needs ``questions=FILE`` (a CSV with Video Name, Question,
Option 1-4). ``qa_shifts=all`` (or ``0,2``) asks every question under cyclic option shifts as well
(docs/scoring.md: circular accuracy). ``frames_order=shuffled`` shows every clip's sampled frames in a seeded random
order, each with its timestamp (``data.frames_order``): the drop from ordered to shuffled accuracy says how much a
checkpoint's answers depend on order (T-GRPO, docs/experiments.md).

``task=vad`` scores long videos frame by frame instead (:mod:`vau.eval.vad`): sliding windows (``vad.window_seconds``,
``vad.stride_seconds``, ``vad.frames_per_window``) each asked Anomaly / Normal, one record per video with one score
per frame, as ``python -m vau score frame_scores=`` reads it.

Output: JSON lines (``out=``, one record per reply; docs/predict.md) written batch by batch, a CSV beside it, and
``<out>.unreadable.txt`` listing the videos that could not be read (counted, never fatal). Rows already in ``out``
(same video, task and shift) are skipped, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

from vau.checkpoints import newest_checkpoint, read_checkpoint
from vau.components import build_components, run_settings
from vau.config import ConfigError, compose, flag, split_args
from vau.data.readers import read_rows
from vau.datamodules.dataset import VIDEO_SUFFIXES, VideoResolver
from vau.datamodules.video import FRAME_ORDERS
from vau.datamodules.views import ViewOptions
from vau.eval.vad import VADSettings, WindowScorer, score_videos
from vau.eval.writer import PredictionWriter
from vau.export import run_config
from vau.outputs import check_output, first_line_is, is_records_file
from vau.qa_position import parse_shifts
from vau.registry import load_plugins
from vau.tasks import Sample, get_task, task_names
from vau.tasks.qa import shift_options
from vau.trainer import build_trainer

log = logging.getLogger(__name__)

KEYS = ("ckpt", "annotations", "videos", "questions", "task", "out", "qa_shifts", "frames_order", "overwrite")
CSV_HEADER = ("video", "task", "shift", "response", "prediction", "frame_times")
USAGE = ("usage: python -m vau predict [conf=NAME] [ckpt=PATH|last] (annotations=FILE | videos=DIR [questions=FILE]) "
         "task=NAME out=FILE.jsonl [qa_shifts=all|0,1,...] [frames_order=ordered|shuffled] [key=value overrides]")


def parse_args(argv: list[str]) -> tuple[str | None, dict[str, str], list[str]]:
    conf, own, overrides = split_args(argv, own=KEYS)
    if not own.get("out"):
        raise ConfigError(f"predict needs out=FILE.jsonl (where the predictions go)\n{USAGE}")
    if bool(own.get("annotations")) == bool(own.get("videos")):
        raise ConfigError(f"predict takes exactly one of annotations=FILE or videos=DIR\n{USAGE}")
    if own.get("frames_order"):  # the frames each clip is shown in (data.frames_order): T-GRPO's measure
        if own["frames_order"] not in FRAME_ORDERS:
            raise ConfigError(f"frames_order={own['frames_order']}: choose one of {', '.join(FRAME_ORDERS)}")
        overrides = [*overrides, f"data.frames_order={own['frames_order']}"]
    return conf, own, overrides


def model_config(conf: str | None, own: dict[str, str], overrides: list[str]):
    """The run config: a checkpoint's own run config (plus overrides), or ``conf`` composed."""
    ckpt = own.get("ckpt")
    if not ckpt:
        return compose(conf, overrides), None
    if ckpt == "last":
        cfg = compose(conf, overrides)
        ckpt = newest_checkpoint(cfg, str(cfg.experiment_name), "ckpt=last")

    path = Path(ckpt)
    if not path.is_file():
        raise ConfigError(f"ckpt={ckpt}: no such checkpoint file")
    return run_config(path, None, overrides), path


def video_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(f"videos={folder}: not a folder")
    # A link that leads nowhere (dangling, or a loop) is kept: reading it fails and it is counted unreadable, not lost.
    files = sorted(p for p in folder.rglob("*")
                   if p.suffix.lower() in VIDEO_SUFFIXES and (p.is_file() or p.is_symlink() and not p.is_dir()))
    if not files:
        raise ConfigError(f"videos={folder}: no video files ({', '.join(VIDEO_SUFFIXES)}) below it")
    return files


def read_questions(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Questions of a CSV (Video Name, Question, Option 1-4; other columns ignored), by video name."""
    if not path.is_file():
        raise ConfigError(f"questions={path}: no such file")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = {h.strip().lower(): h for h in reader.fieldnames or []}
        need = ["video name", "question", "option 1", "option 2"]
        missing = [n for n in need if n not in header]
        if missing:
            raise ConfigError(f"questions={path}: missing column(s) {missing}; a questions file has Video Name, "
                              f"Question, Option 1 .. Option 4")
        out: dict[str, list[dict[str, Any]]] = {}
        for line, rec in enumerate(reader, start=2):
            options = tuple(str(rec.get(header.get(f"option {i}", ""), "") or "").strip() for i in range(1, 5))
            options = tuple(o for o in options if o)
            question = str(rec[header["question"]] or "").strip()
            if question and len(options) >= 2:
                out.setdefault(str(rec[header["video name"]]).strip(), []).append(
                    {"question": question, "options": options, "row": line})
    return out


def build_samples(cfg, task_name: str, own: dict[str, str]) -> list:
    """The samples to predict, QA option shifts included."""
    task = get_task(task_name)
    if own.get("annotations"):
        path = Path(own["annotations"])
        if not path.is_file():
            raise ConfigError(f"annotations={path}: no such file")
        resolver = VideoResolver(cfg.data.get("video_root"), dict(cfg.data.get("video_roots") or {}))
        views = ViewOptions.from_cfg(cfg.data.get("views"))
        # absolute paths: the predictions file (and the report's thumbnails) must not depend on the working folder
        samples = [task.sample(ann, str(resolver(ann.video, ann.source).absolute()))
                   for ann in read_rows(path, cfg.data.get("format")) if task.keeps(ann, False, views)]
    else:
        folder = Path(own["videos"]).absolute()
        files = video_files(folder)
        if task.asks_options:
            if not own.get("questions"):
                raise ConfigError(f"task={task_name} asks a question of each video: give questions=FILE (a CSV with "
                                  f"Video Name, Question, Option 1-4), or choose tag, cls, cls_binary or describe")
            questions = read_questions(Path(own["questions"]))
            samples = []
            for f in files:  # a question names its video by its path below videos=DIR, or by its file name
                rel = str(f.relative_to(folder))
                for q in questions.get(rel) or questions.get(f.name) or []:
                    samples.append(Sample(task=task_name, video=rel, video_path=str(f), row=q["row"],
                                          question=q["question"], options=q["options"]))
        else:
            samples = [Sample(task=task_name, video=str(f.relative_to(folder)), video_path=str(f)) for f in files]
    try:
        shifts = parse_shifts(own.get("qa_shifts"))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if shifts and task.asks_options:
        samples = [shift_options(s, k) for s in samples for k in shifts]
    if not samples:
        raise ConfigError(f"task={task_name}: nothing to predict in {own.get('annotations') or own.get('videos')}")
    return samples


def is_predictions(path: Path) -> bool:
    """Whether ``path`` holds predict's JSON lines (each whole line an object with video, task and response; an empty
    file counts; a torn last line only when it starts like a record): only such a file is resumed (appended to)."""
    return is_records_file(path, {"video", "task", "response"})


def check_outputs(own: dict[str, str]) -> Path:
    """Every file predict will write, checked before any work (vau.outputs): the JSON lines ``out`` (resumed only
    when it holds predictions), its CSV twin and the list of unreadable videos. Returns ``out``."""
    out = Path(own["out"])
    overwrite = flag(own.get("overwrite", "false"), "overwrite")
    inputs = {key: own[key] for key in ("annotations", "questions") if own.get(key)}
    if out.suffix.lower() == ".csv":
        raise ConfigError(f"out={out}: give the JSON-lines file (e.g. out={out.with_suffix('.jsonl')}); predict "
                          f"writes its CSV twin beside it")
    resumable = out.is_file() and is_predictions(out)
    check_output("out", out, inputs, overwrite=overwrite, append=resumable)
    if out.is_file() and not resumable:  # overwrite=true replaces a file that holds no predictions
        out.write_bytes(b"")
    twin = out.with_suffix(".csv")
    check_output("out", twin, inputs, overwrite=overwrite, ours=first_line_is(",".join(CSV_HEADER)),
                 label=f"the CSV twin {twin} of out={out}")
    check_output("out", Path(f"{out}.unreadable.txt"), inputs, overwrite=True,
                 label=f"the list of unreadable videos {out}.unreadable.txt")
    return out


def fingerprint(path: Path) -> str:
    """A quick fingerprint of a weights file or folder: sizes plus the first and last MiB of every file (reading a
    7B checkpoint whole would take a minute; two different checkpoints differ there)."""
    import hashlib

    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(2**20))
            if size > 2**20:
                handle.seek(max(2**20, size - 2**20))
                digest.update(handle.read(2**20))
    return digest.hexdigest()[:16]


def run_identity(cfg, ckpt: Path | None) -> dict[str, str]:
    """What wrote a record, stored in every record as ``run``: the model (checkpoint or backbone, with a fingerprint of
    its weights) and a hash of the settings that change replies (generation, frame sampling, pixel budget, decoder).
    ``predict`` resumes a file only when these match (:func:`resume_keys`)."""
    import hashlib

    from omegaconf import OmegaConf

    if ckpt is not None:
        model = {"model": str(Path(ckpt).resolve()), "weights": fingerprint(Path(ckpt))}
    elif cfg.backbone.get("path"):
        model = {"model": str(Path(cfg.backbone.path).resolve()), "weights": fingerprint(Path(cfg.backbone.path))}
    else:  # a tiny twin: built from its config
        model = {"model": f"backbone={cfg.backbone.name}",
                 "weights": hashlib.sha256(OmegaConf.to_yaml(cfg.backbone).encode()).hexdigest()[:16]}
    settings = {"generation": OmegaConf.to_container(cfg.module.get("generation") or {}, resolve=True),
                "sampler": OmegaConf.to_container(cfg.sampler, resolve=True),
                "pixels": {k: cfg.backbone.get(k) for k in ("min_pixels", "max_pixels", "total_pixels", "dtype")},
                "decoder": str(cfg.data.get("decoder", "pyav"))}
    if str(cfg.data.get("frames_order") or "ordered") != "ordered":  # (absent when ordered: older files resume)
        settings["frames_order"] = str(cfg.data.frames_order)
    model["settings"] = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return model


def resume_keys(out: Path, identity: dict[str, str]) -> set[tuple[str, str, int]]:
    """The (video, task, shift) keys already predicted in ``out``, read in one pass that also refuses to add this
    run's records to a file another model (or other generation settings) started. A torn last line of a killed run
    is ignored (and predicted again)."""
    keys: set[tuple[str, str, int]] = set()
    if not out.is_file():
        return keys
    for number, line in enumerate(out.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(record, dict):
            continue
        theirs = record.get("run")
        if theirs != identity:
            _refuse_resume(out, number, theirs, identity)
        try:
            keys.add(record_key(record))
        except (ValueError, TypeError):
            continue
    return keys


def _refuse_resume(out: Path, number: int, theirs, identity: dict[str, str]):
    if not isinstance(theirs, dict):
        raise ConfigError(f"out={out}, line {number}: a record without the model that wrote it (an older file); "
                          f"resuming could mix two models' replies: choose a new out=")
    what = "model" if (theirs.get("model"), theirs.get("weights")) != (identity["model"], identity["weights"]) \
        else "generation settings"
    raise ConfigError(f"out={out} was started by another {what} ({theirs.get('model')}, weights "
                      f"{theirs.get('weights')}, settings {theirs.get('settings')}) than this run "
                      f"({identity['model']}, weights {identity['weights']}, settings {identity['settings']}); "
                      f"resuming would mix their replies: choose a new out=, or rerun with the same model and "
                      f"settings")


def record_key(record: dict[str, Any]) -> tuple[str, str, int]:
    return str(record.get("video")), str(record.get("task")), int(record.get("shift") or 0)


def write_csv(out: Path) -> Path:
    """The JSON-lines predictions as a CSV beside them (video, task, shift, raw reply, prediction, frame times)."""
    path = out.with_suffix(".csv")
    records = []
    for line in out.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        for r in records:
            writer.writerow([r.get("video"), r.get("task"), r.get("shift", ""), r.get("response"),
                             json.dumps(r.get("prediction")), " ".join(f"{t:g}" for t in r.get("frame_times") or [])])
    return path


def predict(cfg, samples: list, out: Path, ckpt: Path | None) -> dict[str, Any]:
    """Predict ``samples`` not yet in ``out``; returns the counts."""
    identity = run_identity(cfg, ckpt)
    done = resume_keys(out, identity)
    todo = [s for s in samples if (s.video, s.task, int(s.extra.get("shift", 0))) not in done]
    skipped = len(samples) - len(todo)
    if skipped:
        log.info("%d of %d predictions are already in %s: predicting the other %d", skipped, len(samples), out,
                 len(todo))
    writer = PredictionWriter(out, identity)
    if todo:
        # the caller's config stays as it was: this run's task and weights go into a copy
        cfg = copy.deepcopy(cfg)
        cfg.data.task = samples[0].task
        cfg.init_from = str(ckpt) if ckpt is not None else None
        with run_settings(cfg):
            _, data, module = build_components(cfg, out.parent, with_target=False, init_key="ckpt")
            loader = data.eval_loader(data.dataset_of(todo), int(cfg.data.get("eval_batch_size") or cfg.data.batch_size))
            out.parent.mkdir(parents=True, exist_ok=True)
            build_trainer(cfg, out.parent, stage="predict", callbacks=[writer]).predict(
                module, dataloaders=loader, return_predictions=False)
    bad_path = Path(f"{out}.unreadable.txt")
    if writer.unreadable:
        bad_path.write_text("".join(f"{b.get('video')}\t{b.get('reason', '')}\t{b.get('error', '')}\n"
                                    for b in writer.unreadable))
    counts = {"predicted": writer.written, "skipped_as_done": skipped, "unreadable": len(writer.unreadable),
              "unreadable_list": str(bad_path) if writer.unreadable else None}
    if out.is_file():
        counts["csv"] = str(write_csv(out))
    return counts


def vad_videos(cfg, own: dict[str, str]) -> list[tuple[str, str]]:
    """(name, path) of every video ``task=vad`` scores: each annotated video once (``annotations=FILE``, read with
    ``data.format``), or every video file below ``videos=DIR``."""
    if own.get("annotations"):
        path = Path(own["annotations"])
        if not path.is_file():
            raise ConfigError(f"annotations={path}: no such file")
        resolver = VideoResolver(cfg.data.get("video_root"), dict(cfg.data.get("video_roots") or {}))
        seen: dict[str, str] = {}
        for ann in read_rows(path, cfg.data.get("format")):
            seen.setdefault(ann.video, str(resolver(ann.video, ann.source).absolute()))
        return list(seen.items())
    folder = Path(own["videos"]).absolute()
    return [(str(f.relative_to(folder)), str(f)) for f in video_files(folder)]


def predict_vad(cfg, own: dict[str, str], ckpt: Path | None) -> dict[str, Any]:
    """``task=vad``: per-frame anomaly scores of long videos from sliding windows (vau.eval.vad)."""
    import torch

    try:
        settings = VADSettings.from_cfg(cfg.get("vad"))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if settings.question not in task_names():
        raise ConfigError(f"vad.question={settings.question}: not a registered task; e.g. cls_binary")
    out = Path(own["out"])
    identity = {**run_identity(cfg, ckpt), "vad": dict(vars(settings))}
    for number, line in enumerate(out.read_text(encoding="utf-8").splitlines() if out.is_file() else [], start=1):
        try:
            theirs = json.loads(line).get("run")
        except (ValueError, AttributeError):
            continue
        if theirs != identity:
            _refuse_resume(out, number, theirs, identity)
    videos = vad_videos(cfg, own)
    cfg = copy.deepcopy(cfg)
    cfg.data.task = settings.question
    cfg.init_from = str(ckpt) if ckpt is not None else None
    with run_settings(cfg):
        _, data, module = build_components(cfg, out.parent, with_target=False, init_key="ckpt")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        module.to(device).eval()
        scorer = WindowScorer(module, data, settings.question,
                              int(cfg.data.get("eval_batch_size") or cfg.data.batch_size), device)
        out.parent.mkdir(parents=True, exist_ok=True)
        stats = score_videos(videos, scorer, settings, out, size_fn=data.size_fn, identity=identity)
    stats["no_answer_windows"] = scorer.no_answer
    bad_path = Path(f"{out}.unreadable.txt")
    if stats["unreadable"]:
        bad_path.write_text("".join(f"{b['video']}\t{b['reason']}\t{b['error']}\n" for b in stats["unreadable"]))
    return stats


def check_vad_output(own: dict[str, str]) -> None:
    """``task=vad`` writes ``out`` only (one record per video): resumed when it holds such records, else refused
    unless ``overwrite=true``."""
    out = Path(own["out"])
    overwrite = flag(own.get("overwrite", "false"), "overwrite")
    inputs = {key: own[key] for key in ("annotations",) if own.get(key)}
    resumable = out.is_file() and _is_vad_file(out)
    check_output("out", out, inputs, overwrite=overwrite, append=resumable)
    if out.is_file() and not resumable:
        out.write_bytes(b"")
    check_output("out", Path(f"{out}.unreadable.txt"), inputs, overwrite=True,
                 label=f"the list of unreadable videos {out}.unreadable.txt")


def _is_vad_file(path: Path) -> bool:
    return is_records_file(path, {"video", "frame_scores"})


def main(argv: list[str]) -> int:
    """``python -m vau predict ...``; returns the exit code (2 for bad arguments)."""
    try:
        conf, own, overrides = parse_args(list(argv))
        if own.get("task") == "vad":
            return _main_vad(conf, own, overrides)
        check_outputs(own)  # before any model is loaded
        cfg, ckpt = model_config(conf, own, overrides)
        if ckpt is not None:
            read_checkpoint(ckpt, "ckpt")  # a broken file fails here, before the model loads
        load_plugins(cfg.get("plugins") or [])
        task = own.get("task") or str(cfg.data.task)
        if task not in task_names():
            raise ConfigError(f"task={task}: not a registered task; one of {', '.join(task_names())}")
        samples = build_samples(cfg, task, own)
        counts = predict(cfg, samples, Path(own["out"]), ckpt)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    line = (f"predict: {counts['predicted']} predicted, {counts['skipped_as_done']} already in {own['out']}, "
            f"{counts['unreadable']} unreadable")
    if counts["unreadable"]:
        line += f" (listed in {counts['unreadable_list']})"
    print(line)
    if counts.get("csv"):
        print(f"predictions: {own['out']} (JSON lines) and {counts['csv']}")
    return 0


def _main_vad(conf: str | None, own: dict[str, str], overrides: list[str]) -> int:
    try:
        check_vad_output(own)
        cfg, ckpt = model_config(conf, own, overrides)
        if ckpt is not None:
            read_checkpoint(ckpt, "ckpt")
        load_plugins(cfg.get("plugins") or [])
        stats = predict_vad(cfg, own, ckpt)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    line = (f"predict task=vad: {stats['videos']} video(s) scored ({stats['windows']} windows, "
            f"{stats['frames_decoded']} frames decoded in {stats['decode_seconds']:.1f} s, model "
            f"{stats['model_seconds']:.1f} s), {stats['skipped_as_done']} already in {own['out']}, "
            f"{len(stats['unreadable'])} unreadable")
    if stats["no_answer_windows"]:
        line += f"; {stats['no_answer_windows']} window(s) answered without <answer> (scored from the reply)"
    print(line)
    print(f"frame scores: {own['out']} (python -m vau score annotations=FILE format=... frame_scores={own['out']})")
    return 0
