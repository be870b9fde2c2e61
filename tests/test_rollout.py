"""Rollout engines (``module.generation.engine``): every registered engine answers the contract on the tiny model,
and an engine defined outside vau/ produces what GRPO trains on and what evaluation scores."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

from vau.config import compose
from vau.registry import ROLLOUT_ENGINES, load_plugins
from vau.rollout.engine import RolloutEngine
from vau.run import run

SCRIPTED = textwrap.dedent('''
    """A user's rollout engine: every completion is one fixed reply (what a server-side engine returns as text)."""
    import torch

    from vau.registry import ROLLOUT_ENGINES
    from vau.rollout.hf import HFEngine

    REPLY = "<think>scripted</think>\\n<answer>B</answer>"
    CALLS = []


    @ROLLOUT_ENGINES.register("scripted")
    class ScriptedEngine(HFEngine):
        """Answers REPLY to everything (follow-up turns come from the hf engine it extends)."""

        def generate(self, inputs, max_new_tokens, times=1, encoded_vision=None, **sampling):
            CALLS.append((inputs["input_ids"].shape[0], times, bool(sampling.get("do_sample"))))
            backbone = self.module.backbone
            ids = backbone.processor.tokenizer(REPLY, add_special_tokens=False)["input_ids"]
            ids = (ids + [backbone.eos_token_ids[0]])[:max_new_tokens]
            return torch.tensor([ids] * (inputs["input_ids"].shape[0] * times), device=inputs["input_ids"].device)
''')


@pytest.mark.parametrize("name", ROLLOUT_ENGINES.names())
def test_every_engine_keeps_the_contract(name, overrides, tiny_backbone, tmp_path):
    """generate: (B * times, T) ids, each prompt's continuations in consecutive rows; sample: n per prompt; replies:
    greedy, so the same twice."""
    from vau.datamodules.encoding import model_inputs
    from vau.datamodules.vau_bench import VAUBenchDataModule
    from vau.registry import ALGORITHMS

    cfg = compose("demo_grpo", [*overrides, f"module.generation.engine={name}", "module.grpo.max_new_tokens=5",
                                "init_from=null"])
    module = ALGORITHMS.get("grpo").from_config(cfg, tiny_backbone, tmp_path)
    assert isinstance(module.engine, RolloutEngine) and type(module.engine) is ROLLOUT_ENGINES.get(name)
    dm = VAUBenchDataModule(cfg.data, cfg.sampler, tiny_backbone, tiny_backbone.pad_id, with_target=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    prompt = model_inputs(batch, prompt_only=True)
    rows = prompt["input_ids"].shape[0]
    ids, _, _ = module.engine.sample(prompt, 3, 5, do_sample=True, top_k=None)
    assert ids.shape[0] == rows * 3 and ids.shape[1] <= 5
    first, again = module.engine.replies(prompt, 5), module.engine.replies(prompt, 5)
    assert torch.equal(first, again) and first.shape[0] == rows
    follow = module.engine.follow_up(prompt, first, "Check again.")
    assert follow["input_ids"].shape[0] == rows and follow["input_ids"].shape[1] > prompt["input_ids"].shape[1]


@pytest.fixture
def scripted_engine(tmp_path, monkeypatch):
    (tmp_path / "scripted_engine.py").write_text(SCRIPTED)
    monkeypatch.syspath_prepend(str(tmp_path))
    with ROLLOUT_ENGINES.temporary():
        yield "scripted_engine"
    sys.modules.pop("scripted_engine", None)


def test_a_plugin_engine_feeds_grpo_and_evaluation(scripted_engine, overrides, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose("demo", [*overrides, "module=grpo", "module.grpo.max_new_tokens=48", "module.grpo.num_generations=2",
                           "module.generation.max_new_tokens=48", f"plugins=[{scripted_engine}]",
                           "module.generation.engine=scripted", f"run_dir={run_dir}", "data.qa_shifts=null"])
    load_plugins(cfg.plugins)
    plugin = sys.modules[scripted_engine]
    metrics = run("fit", cfg)
    sampled = [c for c in plugin.CALLS if c[2]]
    assert len(sampled) == 2 and all(times == 2 for _, times, _ in sampled)  # two GRPO steps, G = 2, one call each
    assert any(not do_sample for *_, do_sample in plugin.CALLS)  # greedy evaluation asked the same engine
    records = [json.loads(line) for line in (run_dir / "predictions_rank0.jsonl").read_text().splitlines()]
    assert records and {r["response"] for r in records} == {plugin.REPLY}
    from vau.data import read_rows

    truth = [r.answer for r in read_rows(cfg.data.annotations.test) if r.has_question]
    assert metrics["test/format_rate"] == 1.0
    assert metrics["test/qa_accuracy"] == pytest.approx(truth.count("B") / len(truth))  # the engine's "B", scored
