"""GRPOModule with the tiny real model: reference policy, stored old log-probs, forward counts, a short fit."""

import copy
import dataclasses

import pytest
import torch
from peft import LoraConfig, get_peft_model

from vau.config import compose
from vau.data.annotations import read_annotations
from vau.datamodules.encoding import Collator, SampleEncoder, model_inputs
from vau.datamodules.samplers import UniformSampler
from vau.datamodules.video import read_clip
from vau.modules.grpo import GRPOModule
from vau.rewards import RewardSet
from vau.run import run
from vau.tasks import get_task

REWARDS = {"format": {"weight": 1.0}, "choice_accuracy": {"weight": 1.0}}
OPTIM = {"name": "adamw", "lr": 1e-3}


def prompt_batch(backbone, demo_root, n=2):
    spec = get_task("qa")
    encoder = SampleEncoder(backbone, spec)
    items = []
    for ann in read_annotations(demo_root / "train.csv")[:n]:
        sample = spec.sample(ann, str(demo_root / "videos" / ann.video))
        items.append(encoder(sample, read_clip(sample.video_path, UniformSampler(4)), with_target=False))
    return Collator(backbone.pad_id)(items)


def module(backbone, **grpo):
    cfg = {"num_generations": 2, "max_new_tokens": 6, "beta": 0.0, **grpo}
    return GRPOModule(backbone, OPTIM, "qa", RewardSet(REWARDS), grpo=cfg)


def test_one_generation_is_refused(tiny_backbone):
    with pytest.raises(ValueError, match="num_generations=1.*at least 2"):
        module(tiny_backbone, num_generations=1)


def test_repeat_vision_gives_each_copy_the_same_logits(tiny_backbone, demo_root):
    batch = prompt_batch(tiny_backbone, demo_root)
    inputs = model_inputs(batch, prompt_only=True)
    model = tiny_backbone.model.eval()
    with torch.no_grad():
        once = model(**inputs).logits
        thrice = model(**tiny_backbone.repeat_vision(inputs, 3)).logits
    for row in range(2):
        for copy_index in range(3):
            torch.testing.assert_close(thrice[row * 3 + copy_index], once[row], atol=1e-5, rtol=1e-5)


def test_adapter_disabled_reference_equals_the_base_model(tiny_backbone, demo_root):
    base = copy.deepcopy(tiny_backbone.model).eval()
    lora = get_peft_model(tiny_backbone.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                          init_lora_weights=False))
    backbone = dataclasses.replace(tiny_backbone, model=lora)
    grpo = module(backbone, beta=0.1)
    grpo.setup("fit")
    assert grpo.ref_model is None  # no second copy with adapters
    rollout = grpo.rollout(prompt_batch(backbone, demo_root))
    with torch.no_grad():
        policy, _ = grpo.token_logps(lora, rollout)
        with grpo.reference_policy() as ref:
            reference, _ = grpo.token_logps(ref, rollout)
        expected, _ = grpo.token_logps(base, rollout)
    torch.testing.assert_close(reference, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(policy, expected)  # the adapters do change the policy


def test_full_finetuning_reference_is_a_frozen_copy_only_when_beta_positive(tiny_backbone):
    no_kl = module(tiny_backbone, beta=0.0)
    no_kl.setup("fit")
    assert no_kl.ref_model is None
    with_kl = module(tiny_backbone, beta=0.04)
    with_kl.setup("fit")
    assert with_kl.ref_model is not None and not any(p.requires_grad for p in with_kl.ref_model.parameters())
    assert "ref_model.model.language_model.layers.0.self_attn.q_proj.weight" not in with_kl.state_dict()


def test_second_iteration_uses_stored_old_logps(tiny_backbone, demo_root):
    grpo = module(tiny_backbone, num_iterations=2)
    rollout = grpo.rollout(prompt_batch(tiny_backbone, demo_root))
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    optimizer = torch.optim.SGD(grpo.model.parameters(), lr=1.0)
    loss, stats, _, rollout = grpo.loss(rollout, advantages)
    stored = rollout.old_logps.clone()
    assert stats.clip_region.item() == 0  # first iteration: ratio is exactly 1
    loss.backward()
    optimizer.step()
    loss2, stats2, _, again = grpo.loss(rollout, advantages)
    assert again is rollout  # old log-probs stored: nothing new to record
    assert torch.equal(rollout.old_logps, stored)  # not recomputed from the updated policy
    new_logps, _ = grpo.token_logps(grpo.model, rollout)
    assert not torch.allclose(new_logps, stored)
    assert stats2.clip_region.item() > 0  # a big step moves ratios out of [0.8, 1.2]


@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_beta_zero_makes_no_reference_forward(overrides, tmp_path, beta):
    cfg = compose("demo", [*overrides, "module=grpo", f"run_dir={tmp_path}", "trainer.max_steps=2",
                           "test_after_fit=false", "trainer.limit_val_batches=0", "module.grpo.max_new_tokens=4",
                           "module.grpo.num_generations=2", "module.grpo.num_iterations=2", f"module.grpo.beta={beta}"])
    from vau.backbones.base import build_backbone
    from vau.components import build_module
    from vau.datamodules.vau_bench import VAUBenchDataModule
    from vau.trainer import build_trainer

    backbone = build_backbone(cfg.backbone)
    grpo = build_module(cfg, backbone, tmp_path)
    scored = []
    real_token_logps = grpo.token_logps
    grpo.token_logps = lambda model, rollout: scored.append(model) or real_token_logps(model, rollout)
    dm = VAUBenchDataModule(cfg.data, cfg.sampler, backbone, backbone.pad_id, with_target=False)
    build_trainer(cfg, tmp_path).fit(grpo, datamodule=dm)
    # max_steps counts optimiser steps: 2 = one rollout x num_iterations 2 -> 2 policy passes, + 1 reference pass.
    assert len(scored) == (3 if beta else 2)
    assert sum(model is grpo.model for model in scored) == 2
    assert (grpo.ref_model is not None) == bool(beta)


def test_short_grpo_fit_with_two_prompts_per_batch(overrides, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose("demo", [*overrides, "module=grpo", f"run_dir={run_dir}", "trainer.max_steps=2",
                           "module.grpo.max_new_tokens=6", "module.grpo.num_generations=2",
                           "module.grpo.log_completions_every_n_steps=1"])
    assert cfg.data.batch_size == 2
    metrics = run("fit", cfg)
    assert "test/qa_accuracy" in metrics and "test/reward/total" in metrics
    from tests.test_fit import _scalars

    assert len(_scalars(run_dir, "train/reward/format")) == 2
    assert len(_scalars(run_dir, "train/completion_length/mean")) == 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    texts = []
    for path in (run_dir / "tensorboard").glob("events.*"):
        acc = EventAccumulator(str(path), size_guidance={"tensors": 0})
        acc.Reload()
        if "train/completions/text_summary" in acc.Tags()["tensors"]:
            texts += [e.tensor_proto.string_val[0].decode() for e in acc.Tensors("train/completions/text_summary")]
    assert len(texts) == 2  # one table per step (log_completions_every_n_steps=1)
    header = texts[0].splitlines()[0]
    assert "prompt" in header and "format" in header and "choice_accuracy" in header
    assert texts[0].count("demo_train_") == 4  # 2 prompts x 2 generations


def test_a_completion_ending_in_end_of_text_is_not_truncated(tiny_backbone, demo_root):
    # Released Qwen-VL checkpoints stop at <|im_end|> or <|endoftext|>; make the model always say the latter.
    tok = tiny_backbone.processor.tokenizer
    end_of_text = tok.convert_tokens_to_ids("<|endoftext|>")
    tiny_backbone.model.generation_config.eos_token_id = [tiny_backbone.end_of_turn_id, end_of_text]
    tiny_backbone.model.generation_config.sequence_bias = {(end_of_text,): 1e4}
    grpo = module(tiny_backbone, max_new_tokens=4)
    rollout = grpo.rollout(prompt_batch(tiny_backbone, demo_root))
    assert (rollout.completion_ids[:, 0] == end_of_text).all()
    assert not rollout.truncated.any()
    assert rollout.mask[:, 0].tolist() == [1.0] * 4 and rollout.mask[:, 1:].sum() == 0


def test_rollouts_never_contain_vision_placeholder_tokens(tiny_backbone, demo_root):
    # Make <|video_pad|> the model's favourite token: a sampled one would break the loss forward. (A logit bias,
    # not a scaled lm_head row: the row's logit can as well come out very negative.)
    video_pad = tiny_backbone.processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    tiny_backbone.model.generation_config.sequence_bias = {(video_pad,): 1e4}
    grpo = module(tiny_backbone)
    rollout = grpo.rollout(prompt_batch(tiny_backbone, demo_root))
    assert not (rollout.completion_ids == video_pad).any()
    # Every completion carries its clip's length, for duration-aware rewards (2-3 s demo clips).
    assert len(rollout.durations) == 4 and all(1.5 < d < 3.5 for d in rollout.durations)
    grpo.token_logps(grpo.model, rollout)  # and the loss forward accepts the rollout
