"""GRPO with multi-turn rollouts that look again (issue 20, item 3): each reply is trained on as the whole
conversation the processor renders for it, in one forward, with only the tokens the policy wrote in the loss."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from vau.backbones.base import build_backbone
from vau.backbones.tiny import teach_replies
from vau.components import build_module
from vau.config import compose
from vau.datamodules.dataset import VideoTaskDataset
from vau.datamodules.encoding import model_inputs
from vau.datamodules.vau_bench import VAUBenchDataModule
from vau.modules.grpo import Rollout
from vau.modules.grpo_loss import policy_loss
from vau.rollout.look import LookTurns
from vau.tasks.base import LOOK_CHAIN_KEY, look_turn
from vau.trainer import build_trainer

from .test_resume import scalars

FIRST = "<think>a look</think><answer>A</answer><look>[0.5, 1.5]</look>"
FINAL = "<reflect>seen</reflect><think>again</think><answer>B</answer>"
PLAIN = "<think>a square</think><answer>A</answer>"


def look_config(overrides, tmp_path, *extra):
    return compose("demo", [*overrides, "module=grpo", "reward=look_qa", f"run_dir={tmp_path}",
                            "module.generation.look_again=true", "module.generation.look_frames=4",
                            "sampler.num_frames=4", "data.qa_shifts=null", "module.grpo.num_generations=2",
                            "module.grpo.max_new_tokens=48", "module.generation.max_new_tokens=48",
                            "test_after_fit=false", "trainer.limit_val_batches=0", *extra])


@pytest.fixture
def parts(overrides, tmp_path):
    cfg = look_config(overrides, tmp_path)
    backbone = build_backbone(cfg.backbone)
    module = build_module(cfg, backbone, tmp_path)
    data = VAUBenchDataModule(cfg.data, cfg.sampler, backbone, backbone.pad_id, with_target=False)
    data.setup("fit")
    return cfg, module, data


def hand_built(module, data, rows=(0,)):
    """The training examples ``rows`` as prompts, G = 2 each: a reply that looked (first turn, window, final turn, ended) and one that did
    not and ran into the length limit."""
    dataset = data.datasets["train"]
    batch = data.collate([dataset[(0, i)] for i in rows])
    prompts = len(rows)
    window = (0.5, 1.5)
    turns = LookTurns(replies=[[FIRST, FINAL], [PLAIN]] * prompts,
                      looks=[[{"window": list(window), "frame_times": [0.6] * 4}], []] * prompts,
                      shown=[[(FIRST, window, look_turn(window))], []] * prompts, ended=[True, False] * prompts)
    module.train_dataset = lambda: dataset  # what self.trainer.datamodule gives during fit
    fields = module.look_rollout_fields(batch, turns)
    rollout = Rollout(model_inputs(batch, prompt_only=True), samples=[s for s in batch["samples"] for _ in range(2)],
                      durations=[d for d in batch["durations"] for _ in range(2)], **fields)
    return batch, turns, rollout


def test_only_the_tokens_the_policy_wrote_are_in_the_loss(parts):
    _, module, data = parts
    _, _, rollout = hand_built(module, data)
    tokenizer, end = module.backbone.processor.tokenizer, module.backbone.end_of_turn_id

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    written = [rollout.completion_ids[row][rollout.mask[row].bool()].tolist() for row in range(2)]
    # both turns of the looking reply, the end of turn after </look> left out (the template wrote it, not the policy),
    # the end it wrote after its final answer kept; the other reply without an end (it hit the length limit)
    assert written[0] == [*ids(FIRST), *ids(FINAL), end]
    assert written[1] == ids(PLAIN)
    conversation = rollout.conversation
    assert conversation["video_grid_thw"].shape[0] == 3  # two videos for the reply that looked, one for the other
    video = tokenizer.convert_tokens_to_ids(module.backbone.processor.video_token)
    assert not (rollout.completion_ids[rollout.mask.bool()] == video).any()
    row0 = tokenizer.decode(conversation["input_ids"][0])
    assert look_turn((0.5, 1.5)) in row0 and look_turn((0.5, 1.5)) not in tokenizer.decode(written[0])
    assert rollout.truncated.tolist() == [False, True]


TWINS = ["tiny_qwen2_vl", "tiny_qwen2_5_vl", "tiny_qwen3_vl"]


@pytest.mark.parametrize("shared", [True, False], ids=["shared_prompt", "whole_conversations"])
@pytest.mark.parametrize("twin", TWINS)
def test_each_reply_scores_as_its_conversation_alone_and_gradients_follow_the_mask(overrides, tmp_path, twin, shared):
    """The log-probs of the batched conversations (first prompt left-padded, the rest right-padded; with the shared
    prompt, the first prompt once per group and the looked-at frames fed with the rest) equal those of each
    conversation as the processor renders it, run alone through a plain forward (positions of both videos, Qwen3-VL's
    timestamp text, the one-token shift all line up); the policy gradient reaches the parameters and flips sign with
    the advantages."""
    cfg = look_config(overrides, tmp_path, f"backbone={twin}", f"module.grpo.shared_prompt={shared}")
    backbone = build_backbone(cfg.backbone)
    module = build_module(cfg, backbone, tmp_path)
    data = VAUBenchDataModule(cfg.data, cfg.sampler, backbone, backbone.pad_id, with_target=False)
    data.setup("fit")
    train = data.datasets["train"]
    length = [len(train[(0, i)]["prompt_ids"]) for i in range(len(train))]
    other = next(i for i in range(len(train)) if length[i] != length[0])  # a shorter or longer prompt: left padding
    batch, turns, rollout = hand_built(module, data, rows=(0, other))
    lengths = batch["prompt_attention_mask"].sum(dim=1).tolist()
    assert (rollout.looked_vision is not None) and rollout.looked_vision["video_grid_thw"].shape[0] == 2
    with torch.no_grad():
        logps, _ = module.token_logps(module.model, rollout)
    dataset, width = data.datasets["train"], rollout.prompt["input_ids"].shape[1]
    for row in range(4):
        first = int(lengths[row // 2])
        item = dataset.look_item(batch["keys"][row // 2], batch["samples"][row // 2], turns.shown[row], 4,
                                 target=turns.replies[row][-1])
        alone = data.collate([item])
        with torch.no_grad():
            logits = module.model(**model_inputs(alone), use_cache=False).logits[0, :-1].float()
        logits = logits / float(module.cfg.temperature)
        mine = torch.log_softmax(logits, -1).gather(-1, alone["input_ids"][0, 1:].unsqueeze(-1)).squeeze(-1)
        rest = int(rollout.conversation["attention_mask"][row, width:].sum())
        assert torch.equal(alone["input_ids"][0, first:first + rest], rollout.completion_ids[row, :rest])
        counted = rollout.mask[row, :rest].bool()
        assert counted.sum() > 0 and not rollout.mask[row, rest:].any()
        torch.testing.assert_close(logps[row, :rest][counted], mine[first - 1:first - 1 + rest][counted],
                                   rtol=1e-4, atol=1e-4)

    grads = []
    for sign in (1.0, -1.0):
        module.model.zero_grad()
        logps, _ = module.token_logps(module.model, rollout)
        loss, _ = policy_loss(logps, logps.detach(), torch.tensor([sign, -sign] * 2), rollout.mask)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in module.model.parameters() if p.grad is not None]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], -grads[1])


def taught_to_look(cfg, tmp_path, until=0.002):
    """(module, datamodule) of a tiny model taught (teacher forcing) to answer, look at [0.5, 1.5] s and answer
    again on every training clip."""
    backbone = build_backbone(cfg.backbone)
    module = build_module(cfg, backbone, tmp_path)
    data = VAUBenchDataModule(cfg.data, cfg.sampler, backbone, backbone.pad_id, with_target=False)
    data.setup("fit")
    train = data.datasets["train"]
    chains = [replace(s, extra={**s.extra, LOOK_CHAIN_KEY: {"window": [0.5, 1.5], "first": FIRST, "final": FINAL}})
              for s in train.samples]
    teach = VideoTaskDataset(chains, data.encoder, data.eval_sampler, train=False, with_target=True,
                             size_fn=data.size_fn, size_key=data.size_key, look_frames=4)
    batch = data.collate([teach[(0, i)] for i in range(len(teach))])
    # until 0.002, as tests/test_look.py: at 0.02 a greedy token can still be wrong on some machines
    loss = teach_replies(module.model, model_inputs(batch), batch["labels"], max_steps=400, until=until)
    assert loss < until, "the tiny model did not learn the look targets"
    return module, data


def test_grpo_fit_with_looks_trains_on_the_looks_it_samples(overrides, tmp_path):
    """Two GRPO steps of a model taught to look sample replies that look, are shown the window, and update the
    policy; the looks are logged."""
    cfg = look_config(overrides, tmp_path, "trainer.max_steps=2", "module.grpo.temperature=0.3", "data.limit.train=2",
                      "module.grpo.beta=0.1")
    module, data = taught_to_look(cfg, tmp_path)
    trainer = build_trainer(cfg, tmp_path)
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    assert float(metrics["train/look_rate"]) > 0.5 and float(metrics["train/looked_frames"]) > 0
    assert float(metrics["train/reward/look_cost"]) < 0  # the looks were charged
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["train/kl"])
    first = len(module.backbone.processor.tokenizer(FIRST, add_special_tokens=False)["input_ids"])
    assert float(metrics["train/completion_length/mean"]) > first  # the turn after the look is in the loss too


def test_grpo_with_looks_resumes_exactly(overrides, tmp_path):
    """Three GRPO steps with looks, checkpointed every step; a run resumed from step 1's checkpoint (a fresh,
    untaught model: the weights come from the checkpoint) samples, looks and learns as the uninterrupted run did.
    beta 0: a frozen reference is copied from the weights a run starts from, which a real resume gets from the same
    ``init_from`` and this test's two runs would not share (the first starts taught)."""
    # T 0.7 and lr 1e-4 keep the taught model looking through the three steps (at T 1.0 and the demo's lr 2e-3 one
    # update can end the looks, and on some machines did, leaving steps 2-3 nothing to compare)
    common = ["trainer.max_steps=3", "trainer.max_epochs=-1", "module.grpo.temperature=0.7", "data.limit.train=4",
              "data.batch_size=2", "module.grpo.beta=0", "module.optim.lr=1e-4", "checkpoint.every_n_train_steps=1",
              "checkpoint.save_top_k=-1", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false"]
    first = tmp_path / "first"
    cfg = look_config(overrides, first, *common)
    module, data = taught_to_look(cfg, first, until=0.02)  # taught less firmly: its sampled replies keep a spread
    build_trainer(cfg, first).fit(module, datamodule=data)
    second = tmp_path / "second"
    cfg = look_config(overrides, second, *common)
    backbone = build_backbone(cfg.backbone)
    module = build_module(cfg, backbone, second)
    data = VAUBenchDataModule(cfg.data, cfg.sampler, backbone, backbone.pad_id, with_target=False)
    build_trainer(cfg, second).fit(module, datamodule=data, ckpt_path=first / "checkpoints" / "step1.ckpt")
    for tag in ("train/loss", "train/reward", "train/look_rate", "train/looked_frames", "train/reward/look_cost",
                "train/zero_std_fraction"):
        before, after = scalars(first, tag), scalars(second, tag)
        assert len(before) == 3 and sorted(after) == sorted(before)[1:], (tag, before, after)  # steps 2 and 3
        assert after == {s: v for s, v in before.items() if s in after}, tag
    assert min(scalars(second, "train/look_rate").values()) > 0  # both steps compared looked
    assert min(scalars(second, "train/zero_std_fraction").values()) < 1  # and had reward spread to learn from


def test_look_rollouts_refuse_what_they_do_not_support(overrides, tmp_path):
    for extra, key in (("module.grpo.turn_credit=per_turn", "turn_credit"),
                       ("module.grpo.temporal_contrast.enabled=true", "temporal_contrast")):
        cfg = look_config(overrides, tmp_path, extra, "module.grpo.temporal_contrast.reward=choice_accuracy")
        with pytest.raises(ValueError, match=key):
            build_module(cfg, build_backbone(cfg.backbone), tmp_path)
