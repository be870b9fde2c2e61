"""Things a newcomer tripped over: error messages, run folders, checkpoint files, log output."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vau.checkpoints import AtomicCheckpointIO
from vau.config import ConfigError, compose
from vau.run import run

ROOT = Path(__file__).resolve().parent.parent


def _events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_missing_init_from_names_the_command_to_run_and_leaves_no_run_folder(overrides, tmp_path) -> None:
    cfg = compose("demo_grpo", overrides)
    with pytest.raises(ConfigError, match=r"`python -m vau fit conf=demo_sft_shuffled paths.output_dir="):
        run("fit", cfg)
    out = tmp_path / "outputs"
    assert not list(out.rglob("config.yaml")) and not (out / "demo_grpo").exists()


def test_export_of_a_missing_checkpoint_says_the_checkpoint_is_missing(tmp_path) -> None:
    from vau.export import main

    with pytest.raises(ConfigError, match=r"ckpt=.*nope\.ckpt: no such checkpoint file"):
        main([f"ckpt={tmp_path / 'nope.ckpt'}", f"out={tmp_path / 'export'}"])


def test_checkpoints_get_the_users_umask(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "a.ckpt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.ckpt").stat().st_mode) == 0o644


def test_unwritable_checkpoint_folder_fails_before_training(overrides, tmp_path) -> None:
    from vau.checkpoints import ensure_writable

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("a file where the folder should be")
    with pytest.raises(ConfigError, match=rf"cannot write checkpoints to {run_dir / 'checkpoints'}"):
        ensure_writable(run_dir / "checkpoints")  # what fit checks first in a new run folder
    # A run folder that already holds anything is refused even before that (docs/guarantees.md).
    cfg = compose("demo", [*overrides, f"run_dir={run_dir}"])
    with pytest.raises(ConfigError, match="already holds a run"):
        run("fit", cfg)
    assert not (run_dir / "tensorboard").exists()  # nothing ran


class Unsafe:
    """Anything outside tensors and plain containers: torch.load(weights_only=True) refuses to unpickle it."""


def test_init_from_and_ckpt_path_refuse_pickled_objects(overrides, tmp_path) -> None:
    run_dir = tmp_path / "sft"
    run("fit", compose("demo", [*overrides, f"run_dir={run_dir}", "trainer.max_steps=1", "test_after_fit=false"]))
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["extra"] = Unsafe()
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save(checkpoint, unsafe)
    with pytest.raises(ConfigError, match="weights_only=True"):
        run("test", compose("demo", [*overrides, f"run_dir={tmp_path / 'a'}", f"init_from={unsafe}"]))
    with pytest.raises(Exception, match="[Ww]eights.only"):
        run("test", compose("demo", [*overrides, f"run_dir={tmp_path / 'b'}", f"ckpt_path={unsafe}"]))
    # vau's own checkpoints load as before
    metrics = run("test", compose("demo", [*overrides, f"run_dir={tmp_path / 'c'}",
                                           f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"]))
    assert "test/qa_accuracy" in metrics


def test_short_grpo_run_logs_its_last_step_and_labels_completions_like_the_scalars(overrides, tmp_path) -> None:
    run_dir = tmp_path / "grpo"
    cfg = compose("demo_grpo", [*overrides, f"run_dir={run_dir}", "init_from=null", "trainer.max_steps=3",
                                "trainer.log_every_n_steps=10", "test_after_fit=false", "trainer.val_check_interval=null",
                                "module.grpo.num_generations=2", "module.grpo.max_new_tokens=8",
                                "module.grpo.log_completions_every_n_steps=1"])
    run("fit", cfg)
    acc = _events(run_dir)
    reward_steps = [e.step for e in acc.Scalars("train/reward")]
    assert reward_steps and reward_steps[-1] == 2  # the last of 3 steps (0-based, as Lightning numbers them)
    text_steps = sorted(e.step for e in acc.Tensors("train/completions/text_summary"))
    assert text_steps == [0, 1, 2]  # the steps train/* scalars of the same batches are logged at


def test_progress_bar_has_no_negative_epoch_count(overrides, tmp_path) -> None:
    from vau.trainer import build_trainer

    cfg = compose("demo_grpo", [*overrides, "trainer.enable_progress_bar=true", "trainer.max_epochs=-1"])
    trainer = build_trainer(cfg, tmp_path)
    bar = trainer.progress_bar_callback
    bar.setup(trainer, None, "fit")  # what Lightning does when the fit starts
    assert trainer.max_epochs == -1 and bar._get_train_description(0).strip() == "Epoch 0"


@pytest.fixture(scope="module")
def redirected_fit(tmp_path_factory, cache_dir, demo_root):
    """`python -m vau fit` with stdout and stderr redirected to a file, as in a batch job."""
    tmp = tmp_path_factory.mktemp("redirected")
    log_file = tmp / "run.log"
    args = [sys.executable, "-m", "vau", "fit", f"paths.cache_dir={cache_dir}", f"data.root={demo_root}",
            "data.generate=null", f"paths.output_dir={tmp / 'outputs'}", "trainer.max_epochs=2",
            "data.batch_size=2", "data.eval_batch_size=2", "data.limit.train=4", "data.limit.val=2",
            "data.limit.test=2", "module.generation.max_new_tokens=8", "trainer.check_val_every_n_epoch=1"]
    with open(log_file, "w") as out:
        done = subprocess.run(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    text = log_file.read_text()
    assert done.returncode == 0, text[-3000:]
    return text


def test_redirected_fit_logs_a_line_per_epoch(redirected_fit) -> None:
    lines = [line for line in redirected_fit.splitlines() if "vau.callbacks: epoch" in line]
    assert len(lines) == 2 and "epoch 1/2 done, step 2, train/loss" in lines[0]
    assert "val/qa_accuracy" in lines[0] and "elapsed" in lines[0] and "ETA" in lines[0]


def test_redirected_fit_prints_lightning_messages_once_without_noise(redirected_fit) -> None:
    assert redirected_fit.count("GPU available:") == 1
    assert "litlogger" not in redirected_fit and "litmodels" not in redirected_fit
    assert "FLOPs" not in redirected_fit
