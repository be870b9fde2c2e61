"""4-bit NF4 QLoRA and LoRA on the tiny real Qwen2.5-VL: what gets quantised, what trains, gradient checkpointing.

bitsandbytes runs its real CPU 4-bit kernels here (no mocks); vau applies its CPU workaround after loading.
"""

from __future__ import annotations

import pytest
import torch

from vau.config import ConfigError, compose
from vau.registry import ALGORITHMS, REWARDS

REWARD = "test_qlora_char_spread"


def char_spread(completions: list[str], samples: list, **ctx) -> list[float | None]:
    """Distinct characters / 40, capped at 1 (random replies differ: GRPO needs a spread); range [0, 1]."""
    return [min(1.0, len(set(t)) / 40.0) if isinstance(t, str) else 0.0 for t in completions]


if REWARD not in REWARDS:
    REWARDS.register(REWARD)(char_spread)

QLORA = ["backbone.quantization=nf4", "lora.enabled=true", "lora.r=4", "lora.alpha=8"]


def _cfg(overrides, extra):
    return compose("demo", [*overrides, "test_after_fit=false", "trainer.limit_val_batches=0", *extra])


def _backbone(cfg):
    from vau.backbones.base import build_backbone

    return build_backbone(cfg.backbone, lora=cfg.get("lora"))


def _train_batch(cfg, backbone):
    from vau.datamodules.vau_bench import VAUBenchDataModule

    dm = VAUBenchDataModule(cfg.data, cfg.sampler, backbone, backbone.pad_id, with_target=True)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_nf4_quantises_the_language_model_and_keeps_the_vision_tower(overrides):
    import bitsandbytes as bnb

    backbone = _backbone(_cfg(overrides, QLORA))
    four_bit = {n: m for n, m in backbone.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    # 2 decoder layers x (q, k, v, o, gate, up, down)
    assert len(four_bit) == 14 and all(".language_model.layers." in n for n in four_bit)
    visual = backbone.model.get_base_model().model.visual
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in visual.modules())
    assert all(p.dtype == torch.float32 for p in visual.parameters())
    assert not isinstance(backbone.model.get_base_model().lm_head, bnb.nn.Linear4bit)
    for layer in four_bit.values():
        assert layer.weight.quant_state.quant_type == "nf4" and layer.weight.quant_state.nested  # double quant
        assert layer.support_avx512bf16_for_cpu is False  # vau's CPU workaround, applied right after loading
    trainable = [n for n, p in backbone.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_quantize_vision_puts_the_vision_tower_in_4_bit_too(overrides):
    import bitsandbytes as bnb

    backbone = _backbone(_cfg(overrides, [*QLORA, "backbone.quantize_vision=true"]))
    visual = backbone.model.get_base_model().model.visual
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in visual.modules())


def _fit_and_diff(cfg, tmp_path):
    """Fit with the real Trainer; return {name: (before, after)} of every parameter, and the backbone."""
    from vau.components import build_module
    from vau.datamodules.vau_bench import VAUBenchDataModule
    from vau.trainer import build_trainer

    backbone = _backbone(cfg)
    before = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    dm = VAUBenchDataModule(cfg.data, cfg.sampler, backbone, backbone.pad_id,
                            with_target=ALGORITHMS.get(cfg.module.name).needs_targets)
    module = build_module(cfg, backbone, tmp_path)
    build_trainer(cfg, tmp_path).fit(module, datamodule=dm)
    return {n: (before[n], p.detach()) for n, p in backbone.model.named_parameters()}, backbone


@pytest.mark.parametrize("module", ["sft", "grpo"])
def test_qlora_steps_with_gradient_checkpointing_train_only_the_adapters(overrides, tmp_path, module):
    extra = [*QLORA, "backbone.gradient_checkpointing=true", "trainer.max_steps=1", "module.optim.lr=1e-2"]
    if module == "grpo":
        extra += ["module=grpo", "module.grpo.num_generations=4", "module.grpo.max_new_tokens=6",
                  "module.grpo.beta=0.1", f"+reward.{REWARD}={{weight:1.0}}"]
    params, backbone = _fit_and_diff(_cfg(overrides, extra), tmp_path)
    changed = {n for n, (a, b) in params.items() if not torch.equal(a, b)}
    lora_b = {n for n in params if "lora_B" in n}
    assert lora_b and lora_b <= changed  # every adapter got a gradient (B starts at zero)
    assert all("lora_" in n for n in changed)  # nothing else moved
    assert not any(p.requires_grad for n, p in backbone.model.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_reaches_language_and_vision_adapters(overrides, reentrant):
    cfg = _cfg(overrides, ["lora.enabled=true", "lora.vision=true", "lora.r=4", "lora.dropout=0.0",
                           "backbone.gradient_checkpointing=true",
                           f"backbone.gradient_checkpointing_reentrant={str(reentrant).lower()}"])
    backbone = _backbone(cfg)
    from vau.datamodules.encoding import model_inputs

    batch = _train_batch(cfg, backbone)
    for name, p in backbone.model.named_parameters():  # B = 0 would make A's gradient exactly zero
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    backbone.model.train()
    backbone.model(**model_inputs(batch), labels=batch["labels"]).loss.backward()
    adapters = {n: p for n, p in backbone.model.named_parameters() if "lora_" in n}
    assert any(".visual." in n for n in adapters)
    no_grad = [n for n, p in adapters.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad[:4]


def test_reentrant_checkpointing_without_input_grads_fails_as_vau_avoids(overrides):
    """The failure vau's setup prevents: reentrant checkpointing over a frozen base whose embeddings' outputs do not
    require grad leaves the loss without a graph."""
    from vau.datamodules.encoding import model_inputs

    cfg = _cfg(overrides, ["lora.enabled=true", "lora.r=4", "backbone.gradient_checkpointing=true",
                           "backbone.gradient_checkpointing_reentrant=true"])
    backbone = _backbone(cfg)
    base = backbone.model.get_base_model()
    for embedding in (base.model.language_model.embed_tokens, base.model.visual.patch_embed):
        embedding._forward_hooks.clear()  # undo the require-grad hooks vau, transformers and PEFT registered
    batch = _train_batch(cfg, backbone)
    backbone.model.train()
    loss = backbone.model(**model_inputs(batch), labels=batch["labels"]).loss
    with pytest.raises(RuntimeError, match="does not require grad"):
        loss.backward()


def test_nf4_without_lora_is_refused_with_the_key_to_set(overrides):
    with pytest.raises(ValueError, match="lora.enabled=true"):
        _backbone(_cfg(overrides, ["backbone.quantization=nf4"]))


def test_nf4_with_fsdp_is_refused(overrides, tmp_path):
    from vau.trainer import build_trainer

    cfg = _cfg(overrides, [*QLORA, "trainer=fsdp", "trainer.accelerator=cpu"])
    with pytest.raises(ConfigError, match="trainer=ddp"):
        build_trainer(cfg, tmp_path)


def test_unknown_lora_key_and_unmatched_targets_fail_clearly(overrides):
    with pytest.raises(ValueError, match="lora.target_modules"):
        _backbone(_cfg(overrides, ["lora.enabled=true", "lora.target_modules=[nope]"]))
    from vau.backbones.adapters import LoraSettings

    with pytest.raises(ValueError, match="unknown lora key"):
        LoraSettings.from_config({"enabled": True, "rank": 8})
