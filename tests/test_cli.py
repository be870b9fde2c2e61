"""The CLI in a real subprocess: help, list, and one-paragraph errors for a bad stage, conf or key."""

import subprocess
import sys
from pathlib import Path

import pytest

from vau.cli import STAGES, main

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


def test_a_dict_value_with_new_keys_names_the_key_to_add():
    """An open node (the tiny twin's sizes, ``{}`` by default) given a whole dict: Hydra refuses the new keys; the
    message names the first one and how to add it, not the node that does exist."""
    from vau.config import ConfigError, compose

    with pytest.raises(ConfigError) as err:
        compose("demo", ["backbone.sizes={vocab_size:1024}"])
    assert "backbone.sizes.vocab_size" in str(err.value) and "+backbone.sizes.vocab_size=VALUE" in str(err.value)
    assert compose("demo", ["+backbone.sizes.vocab_size=1024"]).backbone.sizes.vocab_size == 1024  # as it says


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


@pytest.mark.parametrize("override, expects", [
    ("trainer.max_steps=abc", "an integer"), ("seed=abc", "an integer"), ("data.batch_size=abc", "an integer"),
    ("module.optim.lr=abc", "a number"), ("trainer.max_steps=2.5", "an integer"),
    ("trainer.enable_progress_bar=maybe", "a boolean"),
])
def test_a_value_of_the_wrong_type_names_key_type_and_value(override, expects, tmp_path):
    key, value = override.split("=")
    # (output and data paths in tmp_path in case a run starts anyway: it did before this check existed)
    out = vau("fit", override, f"paths.output_dir={tmp_path}", f"paths.data_dir={tmp_path}")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    line = next(line for line in out.stderr.splitlines() if line.startswith("error:"))
    assert f"'{key}'" in line and expects in line and f"'{value}'" in line


def test_an_int_where_a_float_is_expected_is_fine():
    from vau.config import compose

    assert compose("demo", ["module.optim.lr=1", "trainer.gradient_clip_val=null"]).module.optim.lr == 1


def test_a_malformed_annotation_file_under_fit_and_test_is_one_line(tmp_path, demo_root, cache_dir):
    import csv

    bad = tmp_path / "bad.csv"
    with open(demo_root / "test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows[1]["Start Time"] = "soon"
    with open(bad, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    common = [f"paths.cache_dir={cache_dir}", f"data.root={demo_root}", "data.generate=null",
              f"paths.output_dir={tmp_path / 'out'}", "trainer.max_steps=1", "trainer.enable_progress_bar=false",
              "data.batch_size=2", "data.eval_batch_size=2", "module.generation.max_new_tokens=4"]
    for stage, key in (("fit", "train"), ("test", "test")):
        out = vau(stage, *common, f"data.annotations.{key}={bad}", f"run_dir={tmp_path / stage}")
        assert out.returncode == 2, out.stderr[-3000:]
        assert "Traceback" not in out.stderr
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(bad) in errors[0] and "row" in errors[0] and "soon" in errors[0]


@pytest.mark.parametrize(("body", "expected"), [
    ("defaults:\n  - demo\n  - _self_\nseedd: 5\n", "unknown config key 'seedd'. Did you mean seed?"),
    ("data:\n  eval_batch_sise: 3\n", "'data.eval_batch_sise'. Did you mean data.eval_batch_size?"),
    ("trainer:\n  max_stepz: 3\n", "'trainer.max_stepz'. Did you mean trainer.max_steps?"),
    ("trainer:\n  max_steps: [3\n", "line 4, column 1"),
])
def test_a_config_file_is_checked_like_the_command_line(body, expected, tmp_path, capsys):
    """Typos inside conf=FILE.yaml fail naming the user's file and the key (they were accepted silently, or ended in a
    Trainer TypeError); a YAML error names the user's file and line, not Hydra's staged copy."""
    from vau.cli import main

    path = tmp_path / "mine.yaml"
    path.write_text("# @package _global_\n" + body)
    assert main(["fit", f"conf={path}"]) == 2
    err = capsys.readouterr().err
    assert expected in err and str(path) in err and "user_conf" not in err


def test_a_config_file_may_set_open_nodes_and_mappings_under_null(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("# @package _global_\ndefaults:\n  - override /data: vau_bench\n  - _self_\nseed: 4\n"
                    "reward:\n  my_reward: {weight: 1.0}\ndata:\n  generate:\n    n_train: 8\n")
    from vau.config import compose

    cfg = compose(str(path))
    assert cfg.seed == 4 and cfg.reward.my_reward.weight == 1.0 and cfg.data.generate.n_train == 8


@pytest.mark.parametrize("stage", sorted(STAGES))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_stage_answers_help_with_its_usage(stage, flag, capsys):
    """`python -m vau <stage> --help` prints the stage's usage (exit 0), whatever else is on the line; it runs
    nothing (no config is needed, no file is read)."""
    extra = ["generate"] if stage == "data" else ["conf=no_such_experiment"]
    assert main([stage, *extra, flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m vau {stage}")
    assert STAGES[stage] in out or stage == "data"


def test_cfg_job_prints_the_composed_config_and_runs_nothing(tmp_path, capsys):
    import yaml

    assert main(["fit", "conf=demo_grpo", "--cfg", "job", "trainer.max_steps=7", f"paths.output_dir={tmp_path}"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["experiment_name"] == "demo_grpo" and printed["trainer"]["max_steps"] == 7
    assert printed["module"]["name"] == "grpo"
    assert not any(tmp_path.iterdir())  # nothing ran
    assert main(["fit", "conf=no_such_experiment", "--cfg", "job"]) == 2  # composing still checks names


@pytest.mark.parametrize("experiment", ["demo", "demo_grpo", "vau_r1_sft_qa"])
def test_the_data_and_trainer_nodes_are_typed(experiment):
    """Defaults written once (vau/schema.py), whichever experiment and trainer file composes them."""
    from omegaconf import OmegaConf

    from vau.config import compose
    from vau.schema import DataConfig, TrainerConfig

    cfg = compose(experiment)
    assert OmegaConf.get_type(cfg.data) is DataConfig and OmegaConf.get_type(cfg.trainer) is TrainerConfig
    assert OmegaConf.get_type(cfg.data.views).__name__ == "ViewsConfig"


def test_a_key_that_is_no_trainer_argument_is_refused_by_name(tmp_path):
    out = vau("fit", "+trainer.limit_val_batchez=0", f"paths.output_dir={tmp_path}", f"paths.data_dir={tmp_path}")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "trainer.limit_val_batchez: not an argument of Lightning's Trainer" in \
        out.stderr
