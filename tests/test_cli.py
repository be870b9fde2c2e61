"""The CLI in a real subprocess: help, list, and one-paragraph errors for a bad stage, conf or key."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def vau(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vau", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_help_lists_stages_and_config_groups():
    out = vau("--help")
    assert out.returncode == 0
    for stage in ("fit", "validate", "test", "list", "score", "data"):
        assert f"  {stage} " in out.stdout
    for group in ("backbone", "data", "sampler", "module", "reward", "trainer", "experiment"):
        assert f"  {group} " in out.stdout
    assert "tiny_qwen2_5_vl" in out.stdout and "demo" in out.stdout


def test_list_prints_every_registry_with_docs():
    out = vau("list", "plugins=[plugins.brevity]", cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for kind in ("tasks:", "algorithms:", "backbones:", "samplers:", "rewards:"):
        assert kind in out.stdout
    assert "tiny_qwen2_5_vl" in out.stdout and "Tiny random Qwen2.5-VL" in out.stdout
    assert "random_segment" in out.stdout
    assert "cls_binary" in out.stdout and "grpo" in out.stdout
    assert "brevity" in out.stdout  # the example plugin, imported from the config key `plugins`


def test_unknown_stage_names_valid_stages():
    out = vau("fti")
    assert out.returncode == 2
    assert "unknown stage 'fti'" in out.stderr and "Did you mean 'fit'" in out.stderr
    assert "validate" in out.stderr


def test_unknown_conf_names_experiments():
    out = vau("fit", "conf=demoo")
    assert out.returncode == 2
    assert "unknown conf 'demoo'" in out.stderr and "Did you mean 'demo'" in out.stderr


def test_unknown_key_names_neighbouring_keys():
    out = vau("fit", "trainer.max_stpes=3")
    assert out.returncode == 2
    assert "trainer.max_stpes" in out.stderr and "Did you mean trainer.max_steps" in out.stderr


def test_unknown_group_choice_lists_choices():
    out = vau("fit", "backbone=qwen9")
    assert out.returncode == 2
    assert "qwen9" in out.stderr and "qwen2_5_vl" in out.stderr


def test_conf_may_be_a_yaml_path(tmp_path):
    from vau.config import compose

    path = tmp_path / "mine.yaml"
    path.write_text("# @package _global_\nexperiment_name: mine\ntrainer:\n  max_steps: 7\n")
    cfg = compose(str(path), ["seed=3"])
    assert cfg.experiment_name == "mine" and cfg.trainer.max_steps == 7 and cfg.seed == 3
