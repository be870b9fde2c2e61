"""Shared fixtures: a tiny real Qwen2.5-VL checkpoint and a small generated benchmark, built once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("vau-cache")


@pytest.fixture(scope="session")
def tiny_path(cache_dir):
    from vau.backbones.qwen import Qwen2_5VLBackbone

    return Qwen2_5VLBackbone.tiny_checkpoint(cache_dir, seed=0)


@pytest.fixture
def tiny_backbone(cache_dir, tiny_path):
    """A fresh model instance per test (tests train it), loaded from the session's cached checkpoint."""
    from vau.registry import BACKBONES, load_builtins

    load_builtins()
    return BACKBONES.get("tiny_qwen2_5_vl")({"cache_dir": str(cache_dir), "seed": 0, "max_pixels": 3136})


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    from vau.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("demo"), n_train=8, n_val=4, n_test=4, seed=0, min_seconds=2.0,
                    max_seconds=3.0)


@pytest.fixture
def overrides(cache_dir, demo_root, tmp_path):
    """Hydra overrides that point a config at the session's data/cache and a temp run dir, few steps on CPU."""
    return [
        f"paths.cache_dir={cache_dir}",
        f"data.root={demo_root}",
        "data.generate=null",
        f"paths.output_dir={tmp_path / 'outputs'}",
        "trainer.max_epochs=1",
        "trainer.max_steps=2",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "data.batch_size=2",
        "data.eval_batch_size=2",
        "module.generation.max_new_tokens=8",
    ]


@pytest.fixture
def fit_with(monkeypatch):
    """``fit_with(cfg, *callbacks)``: ``vau.run.run("fit", cfg)`` with extra Lightning callbacks on its Trainer."""
    import vau.trainer
    from vau.run import run

    def fit(cfg, *callbacks):
        real = vau.trainer.build_trainer

        def with_callbacks(*args, **kwargs):
            trainer = real(*args, **kwargs)
            trainer.callbacks.extend(callbacks)
            return trainer

        monkeypatch.setattr("vau.run.build_trainer", with_callbacks)
        return run("fit", cfg)

    return fit
