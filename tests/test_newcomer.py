"""Things a newcomer tripped over: error messages, run folders, checkpoint files, log output."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from vau.checkpoints import AtomicCheckpointIO
from vau.config import ConfigError, compose
from vau.run import run


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
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("a file where the folder should be")
    cfg = compose("demo", [*overrides, f"run_dir={run_dir}"])
    with pytest.raises(ConfigError, match=rf"cannot write checkpoints to {run_dir / 'checkpoints'}"):
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
