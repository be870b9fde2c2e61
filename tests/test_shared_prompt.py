"""Shared-prompt GRPO equals the repeated-prompt path: logits, log-probs, losses and every gradient, in fp32.

Tolerance: both paths compute the same sums in a different order (a cached prefix, a repeated cache, sdpa over
other shapes), so they agree to fp32 rounding; measured on the tiny twins: logits within 4.2e-7, gradients within
1.1e-6 of each tensor's largest entry. The bound used is 1e-5 relative (plus 1e-6 absolute for values near 0).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from vau.backbones.adapters import LoraSettings, apply_lora
from vau.data.annotations import read_annotations
from vau.datamodules.encoding import Collator, SampleEncoder, model_inputs
from vau.datamodules.samplers import UniformSampler
from vau.datamodules.video import read_clip
from vau.modules.grpo import GRPOModule
from vau.modules.shared_prompt import completion_logits, generate_shared
from vau.registry import BACKBONES
from vau.rewards import RewardSet
from vau.tasks import get_task

RTOL, ATOL = 1e-5, 1e-6
G, STEPS = 3, 6
TWINS = [n for n in BACKBONES.names() if n.startswith("tiny_")]


def prompts(backbone, demo_root):
    """Two prompts of different lengths (the second question is longer), left-padded into one batch."""
    spec = get_task("qa")
    encoder = SampleEncoder(backbone, spec)
    items = []
    for i, ann in enumerate(read_annotations(demo_root / "train.csv")[:2]):
        sample = spec.sample(ann, str(demo_root / "videos" / ann.video))
        if i:
            sample = dataclasses.replace(sample, question=sample.question + " Think about every part of the clip.")
        items.append(encoder(sample, read_clip(sample.video_path, UniformSampler(4)), with_target=False))
    batch = Collator(backbone.pad_id)(items)
    assert batch["prompt_attention_mask"].sum(1).unique().numel() == 2, "the two prompts differ in length"
    return batch


def completions(rows: int, steps: int = STEPS):
    ids = torch.randint(20, 300, (rows, steps), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(rows, steps, dtype=torch.long)
    mask[0, 3:] = 0  # completions that end early: padding after their end
    mask[rows - 2, 1:] = 0
    return ids, mask


def repeated_logits(model, backbone, prompt, ids, mask, times):
    rep = backbone.repeat_vision(prompt, times)
    full = dict(rep, input_ids=torch.cat([rep["input_ids"], ids], 1),
                attention_mask=torch.cat([rep["attention_mask"], mask], 1))
    if "mm_token_type_ids" in rep:
        full["mm_token_type_ids"] = torch.cat([rep["mm_token_type_ids"], torch.zeros_like(ids)], 1)
    return model(**full, logits_to_keep=ids.shape[1] + 1, use_cache=False).logits[:, :-1]


@pytest.fixture(scope="module")
def long_root(tmp_path_factory):
    """Two 30-40 s clips: 4 frames a clip put ~15 s between temporal patches, so Qwen2.5-VL's time positions
    (seconds x tokens_per_second) run far past the token count; the 2-3 s demo clips keep them close to it."""
    from vau.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("long"), n_train=2, n_val=1, n_test=1, seed=0, min_seconds=30.0,
                    max_seconds=40.0, event_seconds=[1.0, 2.0])


@pytest.mark.parametrize("clips", ["short", "long"])
@pytest.mark.parametrize("name", TWINS)
def test_shared_prefix_logits_and_greedy_generation_equal_the_repeated_ones(name, clips, cache_dir, demo_root,
                                                                           long_root):
    backbone = BACKBONES.get(name)({"cache_dir": str(cache_dir), "seed": 0, "min_pixels": 3136,
                                    "max_pixels": 16384 if "qwen3" in name else 3136})
    model = backbone.model.eval()
    prompt = model_inputs(prompts(backbone, demo_root if clips == "short" else long_root), prompt_only=True)
    ids, mask = completions(2 * G)
    with torch.no_grad():
        expected = repeated_logits(model, backbone, prompt, ids, mask, G)
        shared = completion_logits(model, backbone, prompt, ids, mask, G)
        encoded = backbone.encode_vision(model, prompt)
        reused = completion_logits(model, backbone, prompt, ids, mask, G, encoded)
        # the logits of every generated step, not only its tokens: a random tiny model picks the same argmax from
        # logits computed at wrong positions (shared generation on long clips did, until positions were fixed)
        greedy = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": backbone.pad_id, "output_logits": True,
                  "return_dict_in_generate": True}
        rep = backbone.repeat_vision(prompt, G)
        generated = model.generate(**rep, **greedy)
        generated_shared = generate_shared(model, backbone, prompt, G, encoded, **greedy)
    kept = mask.bool()
    torch.testing.assert_close(shared[kept], expected[kept], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(reused[kept], expected[kept], rtol=RTOL, atol=ATOL)
    assert torch.equal(generated_shared.sequences, generated.sequences[:, rep["input_ids"].shape[1]:])
    torch.testing.assert_close(torch.stack(generated_shared.logits, 1), torch.stack(generated.logits, 1),
                               rtol=RTOL, atol=1e-5)


CASES = {
    "full fine-tuning, vision trained": {"lora": None, "freeze_vision": False},
    "full fine-tuning, vision frozen": {"lora": None, "freeze_vision": True},
    "LoRA, vision frozen": {"lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}, "freeze_vision": False},
    "LoRA with vision adapters": {"lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "vision": True},
                                  "freeze_vision": False},
}


def _module(backbone, case, beta, shared):
    model = copy.deepcopy(backbone.model)
    if case["lora"]:
        model = apply_lora(model, LoraSettings.from_config(case["lora"]), backbone.vision_module_prefixes,
                           (backbone.lora_targets, backbone.vision_lora_targets))
        for name, param in model.named_parameters():  # non-zero B: the adapters change the policy from step 1
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.02, generator=torch.Generator().manual_seed(hash(name) % 2**31))
    if case["freeze_vision"]:
        for name, param in model.named_parameters():
            if name.startswith(backbone.vision_module_prefixes):
                param.requires_grad_(False)
    module = GRPOModule(dataclasses.replace(backbone, model=model), {"name": "adamw", "lr": 1e-3}, "qa",
                        RewardSet({"format": {"weight": 1.0}}),
                        grpo={"num_generations": G, "max_new_tokens": STEPS, "beta": beta, "num_iterations": 2,
                              "shared_prompt": shared})
    module.setup("fit")
    return module


def _vision_calls(module) -> list[int]:
    """The number of patch rows of every forward of the policy's vision tower."""
    calls: list[int] = []
    base = getattr(module.model, "get_base_model", lambda: module.model)()
    tower = base.get_submodule(module.backbone.vision_module_prefixes[0])
    tower.register_forward_hook(lambda _module, args, _out: calls.append(args[0].shape[0]))
    return calls


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("case", list(CASES))
def test_grpo_step_gradients_equal_the_repeated_prompt_path(case, beta, tiny_backbone, demo_root):
    batch = prompts(tiny_backbone, demo_root)
    shared, repeat = (_module(tiny_backbone, CASES[case], beta, s) for s in (True, False))
    calls = _vision_calls(shared)
    torch.manual_seed(0)
    rollout = shared.rollout(batch)
    assert (rollout.encoded_vision is not None) == shared.vision_frozen()
    ids, mask = completions(rollout.completion_ids.shape[0], rollout.completion_ids.shape[1])
    rollouts = {}
    for module in (shared, repeat):
        rollouts[module] = dataclasses.replace(rollout, completion_ids=ids, mask=mask.float(), old_logps=None,
                                               ref_logps=None, repeated=None,
                                               encoded_vision=rollout.encoded_vision if module is shared else None)
    advantages = torch.tensor([1.0, -0.5, 0.25, -1.0, 0.5, 0.75])
    optimizers = {m: torch.optim.SGD([p for p in m.model.parameters() if p.requires_grad], lr=0.5)
                  for m in (shared, repeat)}
    for iteration in range(2):  # num_iterations = 2: the second pass uses the stored old log-probs
        grads, losses, logps = {}, {}, {}
        for module in (shared, repeat):
            r = rollouts[module]
            if beta and iteration == 0:
                with torch.no_grad(), module.reference_policy() as ref:
                    r = rollouts[module] = dataclasses.replace(r, ref_logps=module.token_logps(ref, r)[0])
            logps[module] = module.token_logps(module.model, r)[0].detach()
            loss, _, _, rollouts[module] = module.loss(r, advantages)
            loss.backward()
            losses[module] = loss.detach()
            grads[module] = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}
            optimizers[module].step()
            optimizers[module].zero_grad(set_to_none=True)
        kept = mask.bool()
        torch.testing.assert_close(logps[shared][kept], logps[repeat][kept], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(losses[shared], losses[repeat], rtol=RTOL, atol=ATOL)
        assert grads[shared].keys() == grads[repeat].keys() and grads[shared]
        for name, expected in grads[repeat].items():
            scale = expected.abs().max().item()
            torch.testing.assert_close(grads[shared][name], expected, rtol=RTOL, atol=ATOL + RTOL * scale,
                                       msg=lambda m, n=name, i=iteration: f"{case}, iteration {i}, {n}: {m}")
        if beta and iteration == 0:
            torch.testing.assert_close(rollouts[shared].ref_logps[kept], rollouts[repeat].ref_logps[kept],
                                       rtol=RTOL, atol=ATOL)
    # Every vision forward saw the B prompts' videos once (never G copies); a frozen tower ran once for the step.
    assert set(calls) == {batch["vision"]["pixel_values_videos"].shape[0]}
    assert len(calls) == 1 if shared.vision_frozen() else len(calls) > 1
