"""Short fits through the real Trainer, composed with Hydra exactly as the CLI does."""

import json
import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vau.config import compose
from vau.run import run
from vau.tasks import get_task


def _test_samples(cfg):
    from vau.data.annotations import read_annotations
    from vau.datamodules.views import build_samples

    return build_samples(read_annotations(cfg.data.annotations.test), cfg.data.task, train=False)


def _scalars(run_dir, tag):
    events = sorted((run_dir / "tensorboard").glob("events.*"))
    values = []
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values += [e.value for e in acc.Scalars(tag)]
    return values


def test_short_sft_fit_writes_logs_checkpoint_predictions_and_metrics(overrides, tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = compose("demo", [*overrides, f"run_dir={run_dir}", "trainer.max_steps=3"])
    metrics = run("fit", cfg)
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    losses = _scalars(run_dir, "train/loss")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert {"test/qa_accuracy", "test/format_rate"} <= set(metrics)
    lines = (run_dir / "predictions_rank0.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    # every test question gets a prediction under each of its 4 option shifts (the demo's data.qa_shifts: all)
    assert len(lines) == 16
    assert sorted(r["shift"] for r in records) == sorted([0, 1, 2, 3] * 4)
    assert "test/qa_circular_accuracy" in metrics
    # The logged accuracy is the task's accuracy of exactly the original-order replies written to the file.
    records = [r for r in records if r["shift"] == 0]
    samples = {s.video: s for s in _test_samples(cfg)}
    task = get_task("qa")
    expected = sum(task.accuracy(r["response"], samples[r["video"]]) for r in records) / len(records)
    assert metrics["test/qa_accuracy"] == pytest.approx(expected)
    assert "test/qa_accuracy" in capsys.readouterr().out  # the final table


def test_same_config_gives_same_numbers(overrides, tmp_path):
    results = []
    for name in ("a", "b"):
        run_dir = tmp_path / name
        cfg = compose("demo", [*overrides, f"run_dir={run_dir}", "test_after_fit=false", "sampler=random_segment",
                               "sampler.num_frames=4"])
        run("fit", cfg)
        results.append(_scalars(run_dir, "train/loss"))
    assert results[0] == results[1] and len(results[0]) == 2


def test_test_stage_loads_last_checkpoint(overrides, tmp_path):
    cfg = compose("demo", [*overrides, "test_after_fit=false"])  # run dir under paths.output_dir/demo/
    run("fit", cfg)
    cfg = compose("demo", [*overrides, f"run_dir={tmp_path / 'eval'}", "ckpt_path=last"])
    metrics = run("test", cfg)
    assert "test/qa_accuracy" in metrics


def test_fit_with_the_example_plugin_reward(overrides, tmp_path):
    from pathlib import Path

    from vau.registry import REWARDS, load_plugins

    conf = Path(__file__).resolve().parent.parent / "plugins" / "brevity.yaml"
    run_dir = tmp_path / "run"
    cfg = compose(str(conf), [*overrides, f"run_dir={run_dir}"])
    assert "plugins.brevity" in cfg.plugins and "brevity" in cfg.reward
    load_plugins(cfg.plugins)  # what the CLI does before run()
    assert "brevity" in REWARDS
    metrics = run("fit", cfg)
    replies = [json.loads(line)["response"] for line in (run_dir / "predictions_rank0.jsonl").read_text().splitlines()]
    expected = REWARDS.get("brevity")(replies, [None] * len(replies))
    assert metrics["test/reward/brevity"] == pytest.approx(sum(expected) / len(expected))
    assert _scalars(run_dir, "test/reward/brevity")


def test_torch_threads_apply_to_the_run_and_are_restored(overrides, tmp_path, fit_with):
    import lightning as L
    import torch

    seen: list[int] = []

    class Threads(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    fit_with(compose("demo", [*overrides, f"run_dir={tmp_path}", "test_after_fit=false", "torch_threads=1"]), Threads())
    assert seen == [1] and torch.get_num_threads() == before
