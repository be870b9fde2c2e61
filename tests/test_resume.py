"""Checkpoints and exact resume.

A run resumed from the checkpoint of step k must log the same losses from step k+1 on as the run that was never
interrupted: same weights and optimizer state, same data order (mid-epoch too, without re-reading the batches
already trained on), same RNG state (LoRA dropout, GRPO sampling). Checked in-process from every-step checkpoints,
and with a real ``python -m vau fit`` killed by SIGKILL and resumed with ``ckpt_path=last``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vau.config import compose
from vau.run import run

ROOT = Path(__file__).resolve().parent.parent
# 8 training clips, batch 2: 4 steps per epoch, so 6 steps cross an epoch boundary. LoRA dropout and random frame
# positions draw from RNGs; every step writes a checkpoint.
SFT = ["trainer.max_steps=6", "trainer.max_epochs=-1", "checkpoint.every_n_train_steps=1", "checkpoint.save_top_k=-1",
       "lora.enabled=true", "lora.r=4", "lora.dropout=0.1", "sampler=random_segment", "sampler.num_frames=4",
       "module.optim.lr=5e-3", "test_after_fit=false", "trainer.limit_val_batches=0"]
# GRPO with full fine-tuning (full checkpoints, frozen reference copy): sampled rollouts must repeat after resume.
GRPO = ["module=grpo", "trainer.max_steps=3", "trainer.max_epochs=-1", "checkpoint.every_n_train_steps=1",
        "checkpoint.save_top_k=-1", "module.grpo.num_generations=2", "module.grpo.max_new_tokens=6",
        "module.grpo.beta=0.1", "module.optim.lr=1e-3", "test_after_fit=false", "trainer.limit_val_batches=0"]


def scalars(run_dir: Path, tag: str = "train/loss") -> dict[int, float]:
    values = {}
    for path in sorted((run_dir / "tensorboard").glob("events.*")):
        acc = EventAccumulator(str(path))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values.update({e.step: e.value for e in acc.Scalars(tag)})
    return values


def fit(overrides: list[str], run_dir: Path, ckpt: Path | str | None = None) -> dict[int, float]:
    extra = [f"run_dir={run_dir}"] + ([f"ckpt_path={ckpt}"] if ckpt else [])
    run("fit", compose("demo", [*overrides, *extra]))
    return scalars(run_dir)


def checkpoint(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step{step}.ckpt"


@pytest.fixture(scope="module")
def reference(cache_dir, demo_root, tmp_path_factory):
    """The uninterrupted 6-step LoRA SFT run: (its overrides, its run dir, its losses by step)."""
    out = tmp_path_factory.mktemp("reference")
    overrides = [f"paths.cache_dir={cache_dir}", f"data.root={demo_root}", "data.generate=null",
                 f"paths.output_dir={out / 'outputs'}", "trainer.enable_progress_bar=false",
                 "trainer.log_every_n_steps=1", "data.batch_size=2", *SFT]
    losses = fit(overrides, out / "run")
    assert sorted(losses) == [0, 1, 2, 3, 4, 5] or sorted(losses) == [1, 2, 3, 4, 5, 6], losses
    return overrides, out / "run", losses


def test_lora_checkpoints_hold_only_the_adapters(reference):
    _, run_dir, _ = reference
    state = torch.load(checkpoint(run_dir, 2), map_location="cpu", weights_only=True)
    assert state["state_dict"] and all("lora_" in k for k in state["state_dict"])
    assert state["vau"]["adapter_only"] is True
    assert state["VAUBenchDataModule"]["batches"] == 2 and state["VAUBenchDataModule"]["epoch"] == 0
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))  # atomic writes leave no temporary files


@pytest.mark.parametrize("step", [2, 4])  # mid-epoch, and the end of epoch 0
def test_resume_from_step_k_repeats_the_losses_after_it(reference, tmp_path, step):
    overrides, run_dir, losses = reference
    resumed = fit(overrides, tmp_path / "resumed", ckpt=checkpoint(run_dir, step))
    later = {s: v for s, v in losses.items() if s >= min(resumed)}
    assert len(resumed) == 6 - step and resumed == later


def test_resume_without_the_data_position_would_train_on_other_batches(reference, tmp_path):
    """The check above can fail: drop the saved data position and RNG state (what Lightning alone restores for a
    plain DataLoader) and step 3 sees a different batch, so its loss differs."""
    overrides, run_dir, losses = reference
    state = torch.load(checkpoint(run_dir, 2), map_location="cpu", weights_only=True)
    state["VAUBenchDataModule"] = {"seed": state["VAUBenchDataModule"]["seed"]}
    del state["vau"]["rng_states"]
    stripped = tmp_path / "stripped.ckpt"
    torch.save(state, stripped)
    resumed = fit(overrides, tmp_path / "resumed", ckpt=stripped)
    first = min(resumed)
    assert resumed[first] != losses[first]


def test_grpo_full_finetuning_resume_repeats_sampled_rollouts(cache_dir, demo_root, tmp_path):
    overrides = [f"paths.cache_dir={cache_dir}", f"data.root={demo_root}", "data.generate=null",
                 f"paths.output_dir={tmp_path / 'outputs'}", "trainer.enable_progress_bar=false",
                 "trainer.log_every_n_steps=1", "data.batch_size=2", *GRPO]
    losses = fit(overrides, tmp_path / "a")
    rewards = scalars(tmp_path / "a", "train/reward")
    state = torch.load(checkpoint(tmp_path / "a", 1), map_location="cpu", weights_only=True)
    assert not state["vau"]["adapter_only"] and any(".visual." in k for k in state["state_dict"])  # full weights
    resumed = fit(overrides, tmp_path / "b", ckpt=checkpoint(tmp_path / "a", 1))
    assert len(resumed) == 2 and resumed == {s: v for s, v in losses.items() if s in resumed}
    assert scalars(tmp_path / "b", "train/reward") == {s: v for s, v in rewards.items() if s in resumed}


def _global_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except Exception:
        return -1  # not there yet


def test_sigkill_then_ckpt_path_last_continues_exactly(reference, tmp_path):
    """A real ``python -m vau fit`` process, killed with SIGKILL once it has checkpointed step 2 or later."""
    overrides, _, losses = reference
    args = [*[o for o in overrides if not o.startswith("paths.output_dir=")], f"paths.output_dir={tmp_path}"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    env.pop("VAU_RUN_DIR", None)
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "vau", "fit", *args], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    step = -1
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            lasts = list((tmp_path / "demo").glob("*/checkpoints/last.ckpt"))
            step = _global_step(lasts[0]) if lasts else -1
            if step >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before it could be killed; see {log.name}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _global_step(next((tmp_path / "demo").glob("*/checkpoints/last.ckpt")))
    assert 2 <= killed_at < 6, killed_at
    resumed = subprocess.run([sys.executable, "-m", "vau", "fit", *args, "ckpt_path=last"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    runs = sorted((tmp_path / "demo").iterdir())
    assert len(runs) == 2  # the killed run's folder, then the resumed run's
    after = scalars(runs[-1])
    print(f"killed after step {killed_at}; resumed losses {after}; uninterrupted {losses}")
    assert len(after) == 6 - killed_at and after == {s: v for s, v in losses.items() if s in after}
