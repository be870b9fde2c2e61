"""``python -m vau data difficulty``: how hard each training row is for a model, before RL spends rollouts on it.

    python -m vau data difficulty ckpt=outputs/demo_sft_chance/<run>/checkpoints/last.ckpt \\
        annotations=data/demo/train.csv num_generations=8 out=difficulty.jsonl

Every row the task keeps for training is answered ``num_generations`` (G) times by sampling (``temperature``, default
the config's ``module.grpo.temperature``), and one line per row is written: ``pass_rate`` (the share of right
answers, ``Task.is_correct`` of ``Task.accuracy``), ``pass_at_g`` (at least one right), ``mean_reward`` (the
configured reward set, or the task's default rewards) and the run's identity (weights, settings). Rows are written
batch by batch; a rerun skips the rows already in ``out`` (a torn last line of a killed run is cut) and refuses a
file another model or setting started. A resumed run's samples come from a fresh RNG state: pass rates are
estimates from G samples either way.

A GRPO run keeps a band of them with ``data.difficulty.file=difficulty.jsonl data.difficulty.keep=[0.01,0.99]``
(drops rows every sample got right or wrong: groups without reward spread; Time-R1, VideoTG-R1, Temporal-RLT filter
this way; docs/experiments.md).
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from vau.components import build_components, run_settings
from vau.config import ConfigError, flag, split_args
from vau.data.readers import read_rows
from vau.datamodules.dataset import VideoResolver
from vau.datamodules.encoding import model_inputs
from vau.datamodules.views import ViewOptions
from vau.outputs import check_output, cut_torn_line, is_records_file
from vau.predict import _refuse_resume, model_config, run_identity
from vau.rewards import build_rewards
from vau.tasks import get_task, task_names

log = logging.getLogger(__name__)

KEYS = ("ckpt", "annotations", "task", "num_generations", "temperature", "out", "overwrite")
USAGE = ("usage: python -m vau data difficulty [conf=NAME] [ckpt=PATH|last] annotations=FILE [task=qa] "
         "num_generations=G out=FILE.jsonl [temperature=T] [key=value overrides]")


def row_key(sample) -> tuple[str, int, str]:
    return str(sample.video), int(sample.row or 0), str(sample.task)


def done_rows(out: Path, identity: dict) -> set[tuple[str, int, str]]:
    """Rows already in ``out``; refuses a file another model or setting wrote; cuts a torn last line."""
    if not out.is_file():
        return set()
    cut_torn_line(out)
    keys = set()
    for number, line in enumerate(out.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError:
            raise ConfigError(f"out={out}, line {number}: not a difficulty record; choose a new out= or "
                              f"overwrite=true") from None
        if record.get("run") != identity:
            _refuse_resume(out, number, record.get("run"), identity)
        keys.add((str(record.get("video")), int(record.get("row") or 0), str(record.get("task"))))
    return keys


def pass_rates(cfg, samples: list, out: Path, ckpt: Path | None, G: int, temperature: float) -> dict[str, Any]:
    """Sample ``G`` answers to every sample not yet in ``out`` and append one record per sample."""
    identity = {**run_identity(cfg, ckpt), "num_generations": G, "temperature": temperature}
    done = done_rows(out, identity)
    todo = [s for s in samples if row_key(s) not in done]
    stats = {"rows": 0, "skipped_as_done": len(samples) - len(todo), "unreadable": 0}
    if not todo:
        return stats
    cfg = copy.deepcopy(cfg)
    cfg.data.task = todo[0].task
    cfg.init_from = str(ckpt) if ckpt is not None else None
    task = get_task(todo[0].task)
    rewards = build_rewards(dict(cfg.get("reward") or {})) if cfg.get("reward") else None
    if rewards is None or not len(rewards):
        rewards = build_rewards({k: dict(v) for k, v in task.default_rewards.items()})
    max_new_tokens = int((cfg.module.get("grpo") or {}).get("max_new_tokens") or
                         cfg.module.generation.max_new_tokens)
    with run_settings(cfg):
        _, data, module = build_components(cfg, out.parent, with_target=False, init_key="ckpt")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        module.to(device).eval()
        loader = data.eval_loader(data.dataset_of(todo), int(cfg.data.get("eval_batch_size") or cfg.data.batch_size))
        out.parent.mkdir(parents=True, exist_ok=True)
        for batch in loader:
            stats["unreadable"] += len(batch.get("bad") or [])
            if not batch["size"]:
                continue
            batch = move_data_to_device(batch, device)
            with torch.no_grad():
                # each prompt prefilled once and continued G times (the shared-prompt rollout of GRPO)
                ids = module.engine.generate(model_inputs(batch, prompt_only=True), max_new_tokens, times=G,
                                             do_sample=True, temperature=temperature, top_p=1.0, top_k=None)
            texts = module.decode(ids)
            samples = [s for s in batch["samples"] for _ in range(G)]
            totals = rewards(texts, samples, max_new_tokens=max_new_tokens,
                             durations=[d for d in batch.get("durations", [None] * batch["size"]) for _ in range(G)]
                             ).total.tolist()
            lines = []
            for i, sample in enumerate(batch["samples"]):
                right = [task.is_correct(task.accuracy(t, sample)) for t in texts[i * G:(i + 1) * G]]
                video, row, name = row_key(sample)
                lines.append(json.dumps({"video": video, "row": row, "task": name, "pass_rate": sum(right) / G,
                                         "pass_at_g": any(right), "mean_reward": sum(totals[i * G:(i + 1) * G]) / G,
                                         "num_generations": G, "run": identity}) + "\n")
            with out.open("a", encoding="utf-8") as handle:
                handle.write("".join(lines))
            stats["rows"] += len(lines)
    return stats


def training_samples(cfg, task_name: str, path: Path) -> list:
    """The samples a training run of ``task_name`` makes of the file (its training view: e.g. TAG keeps normal clips)."""
    if not path.is_file():
        raise ConfigError(f"annotations={path}: no such file")
    task = get_task(task_name)
    resolver = VideoResolver(cfg.data.get("video_root"), dict(cfg.data.get("video_roots") or {}))
    views = ViewOptions.from_cfg(cfg.data.get("views"))
    samples = [task.sample(ann, str(resolver(ann.video, ann.source).absolute()))
               for ann in read_rows(path, cfg.data.get("format")) if task.keeps(ann, True, views)]
    if not samples:
        raise ConfigError(f"task={task_name}: no training rows in {path}")
    return samples


def main(argv: list[str]) -> int:
    """``python -m vau data difficulty ...``; returns the exit code (2 for bad arguments)."""
    try:
        conf, own, overrides = split_args(list(argv), own=KEYS)
        missing = [k for k in ("annotations", "out") if not own.get(k)]
        if missing:
            raise ConfigError(f"data difficulty needs {' and '.join(k + '=' for k in missing)}\n{USAGE}")
        try:
            G = int(own.get("num_generations", 8))
        except ValueError:
            raise ConfigError(f"num_generations={own['num_generations']}: give a whole number >= 1") from None
        if G < 1:
            raise ConfigError(f"num_generations={G}: give a whole number >= 1")
        out = Path(own["out"])
        overwrite = flag(own.get("overwrite", "false"), "overwrite")
        resumable = out.is_file() and is_records_file(out, {"video", "row", "task", "pass_rate"})
        check_output("out", out, {"annotations": own["annotations"]}, overwrite=overwrite,
                     append=resumable and not overwrite)
        if overwrite and out.is_file():
            out.write_bytes(b"")
        cfg, ckpt = model_config(conf, own, overrides)
        temperature = float(own.get("temperature") or (cfg.module.get("grpo") or {}).get("temperature") or 1.0)
        task = own.get("task") or str(cfg.data.task)
        if task not in task_names() or not get_task(task).scored:
            raise ConfigError(f"task={task}: give a registered task with answers to score (e.g. qa, tag, cls)")
        samples = training_samples(cfg, task, Path(own["annotations"]))
        stats = pass_rates(cfg, samples, out, ckpt, G, temperature)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"data difficulty: {stats['rows']} row(s) sampled {G} times, {stats['skipped_as_done']} already in "
          f"{own['out']}, {stats['unreadable']} unreadable")
    return 0
