"""The component model end to end: plugins add a task, a reward and a training algorithm without touching vau/,
every experiment config builds its components on CPU, and GRPO on cls_binary trains on an accuracy reward."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vau.config import choices, compose
from vau.registry import ALGORITHMS, BACKBONES, load_plugins
from vau.run import run
from vau.tasks import get_task

PLUGIN = textwrap.dedent('''
    """A user's plugin file: a task, a reward and a GRPO variant, registered on import."""
    from vau.modules.grpo import GRPOModule
    from vau.registry import ALGORITHMS, REWARDS, TASKS
    from vau.tasks import THINK_INSTRUCTION
    from vau.tasks.qa import MultipleChoiceQA

    ROLLOUTS = []


    @TASKS.register("qa_letter_only")
    class LetterOnlyQA(MultipleChoiceQA):
        """QA rows, answered with the option letter alone, no reasoning."""

        format_tags = ("answer",)

        def prompt(self, sample):
            return super().prompt(sample).replace(THINK_INSTRUCTION, "Reply inside <answer> </answer>.")

        def target(self, sample):
            return f"<answer>{sample.answer}</answer>"


    @REWARDS.register("names_a_letter")
    def names_a_letter(completions, samples, **ctx):
        """1 when the reply contains an option letter A-D, else 0; range [0, 1]."""
        return [float(any(letter in c for letter in "ABCD")) for c in completions]


    @ALGORITHMS.register("grpo_counting_rollouts")
    class CountingGRPO(GRPOModule):
        """GRPO that records the number of prompts of every rollout."""

        def rollout(self, batch):
            ROLLOUTS.append(len(batch["samples"]))
            return super().rollout(batch)
''')


def _scalars(run_dir, tag):
    values = []
    for path in sorted((run_dir / "tensorboard").glob("events.*")):
        acc = EventAccumulator(str(path))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values += [e.value for e in acc.Scalars(tag)]
    return values


GRPO_SHORT = ["module=grpo", "module.grpo.max_new_tokens=6", "module.grpo.num_generations=2", "module.grpo.beta=0.0"]


@pytest.fixture
def scoped_registries(monkeypatch):
    """What a test registers is gone afterwards, so other tests see only the built-in entries."""
    from contextlib import ExitStack

    from vau.registry import ALL

    with ExitStack() as stack:
        for registry in ALL.values():
            stack.enter_context(registry.temporary())
        yield
        sys.modules.pop("my_vau_plugin", None)


def test_plugin_task_reward_and_algorithm_train_two_steps(overrides, tmp_path, monkeypatch, scoped_registries):
    (tmp_path / "my_vau_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "run"
    cfg = compose("demo", [*overrides, *GRPO_SHORT, f"run_dir={run_dir}", "plugins=[my_vau_plugin]",
                           "module.name=grpo_counting_rollouts", "data.task=qa_letter_only", "reward=none",
                           "+reward.names_a_letter.weight=1.0", "+reward.format.weight=1.0"])
    load_plugins(cfg.plugins)  # what the CLI does before run()
    plugin = sys.modules["my_vau_plugin"]
    metrics = run("fit", cfg)
    assert plugin.ROLLOUTS == [2, 2]  # the plugin's algorithm ran both steps
    assert len(_scalars(run_dir, "train/reward/names_a_letter")) == 2
    assert len(_scalars(run_dir, "train/reward/format")) == 2
    records = [json.loads(line) for line in (run_dir / "predictions_rank0.jsonl").read_text().splitlines()]
    assert records and {r["task"] for r in records} == {"qa_letter_only"}
    assert "test/qa_accuracy" in metrics  # the plugin task inherits QA's metric, bound to itself


def test_grpo_on_cls_binary_trains_on_accuracy_and_reports_binary_accuracy(overrides, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose("demo", [*overrides, *GRPO_SHORT, f"run_dir={run_dir}", "data.task=cls_binary",
                           "reward=cls_binary"])
    metrics = run("fit", cfg)
    accuracy = _scalars(run_dir, "train/reward/accuracy")
    assert len(accuracy) == 2 and all(0.0 <= v <= 1.0 for v in accuracy)
    records = [json.loads(line) for line in (run_dir / "predictions_rank0.jsonl").read_text().splitlines()]
    from vau.data.annotations import read_annotations
    from vau.datamodules.views import build_samples

    samples = {s.video: s for s in build_samples(read_annotations(cfg.data.annotations.test), "cls_binary", False)}
    task = get_task("cls_binary")
    expected = sum(task.accuracy(r["response"], samples[r["video"]]) for r in records) / len(records)
    assert metrics["test/cls_binary_accuracy"] == pytest.approx(expected)


@pytest.mark.parametrize("name", choices("experiment"))
def test_every_experiment_builds_its_components_on_cpu(name, overrides, tiny_backbone, tmp_path):
    """Rewards, sampler, training algorithm, DataModule and strategy of every experiment are built; a config for a
    real checkpoint is checked against its backbone builder, and its module is built on the tiny backbone."""
    from vau.datamodules.samplers import build_sampler
    from vau.datamodules.vau_bench import VAUBenchDataModule
    from vau.trainer import build_strategy

    cfg = compose(name, [o for o in overrides if not o.startswith(("trainer.", "module.", "data.batch"))])
    assert cfg.experiment_name
    algorithm = ALGORITHMS.get(cfg.module.name)
    builder = BACKBONES.get(cfg.backbone.name)
    assert builder is not None
    if not cfg.backbone.name.startswith("tiny_"):
        assert cfg.backbone.path and cfg.backbone.path != "???", "a real-checkpoint experiment names its weights"
    build_sampler(cfg.sampler)
    module = algorithm.from_config(cfg, tiny_backbone, tmp_path)
    assert module.needs_targets is algorithm.needs_targets
    if algorithm.needs_targets is False:  # generation-based training needs a reward to learn from
        assert module.rewards is not None and len(module.rewards)
    VAUBenchDataModule(cfg.data, cfg.sampler, tiny_backbone, tiny_backbone.pad_id,
                       with_target=algorithm.needs_targets)
    kwargs = algorithm.trainer_kwargs(dict(cfg.trainer))
    build_strategy(cfg, kwargs.get("strategy", "auto"))
