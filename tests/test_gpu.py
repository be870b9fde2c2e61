"""GPU-only checks (run by benchmarks/gpu_check.sh on a CUDA machine): 4-bit QLoRA with CUDA bitsandbytes, bf16
autocast over fp32 master weights, and the shared-prompt GRPO path under bf16.

Without a CUDA device every test here is skipped (the reason says so). ``VAU_GPU_TESTS_ON_CPU=1`` runs them on the
CPU instead, to check the test code itself where no GPU is at hand (bitsandbytes then uses its CPU kernels).
"""

from __future__ import annotations

import os

import pytest
import torch

from vau.config import compose

ON_CPU = os.environ.get("VAU_GPU_TESTS_ON_CPU") == "1"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or ON_CPU),
                       reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs these; VAU_GPU_TESTS_ON_CPU=1 dry-runs "
                              "them on the CPU)"),
]
ACCELERATOR = "cpu" if ON_CPU else "gpu"
DEVICE = "cpu" if ON_CPU else "cuda"
STEPS = ["module.optim.lr=1e-6", "module.optim.warmup_ratio=0.0", "trainer.max_steps=3", "test_after_fit=false",
         "trainer.limit_val_batches=0", f"trainer.accelerator={ACCELERATOR}", "trainer.devices=1",
         "trainer.precision=bf16-mixed"]


@pytest.mark.parametrize("mode", ["full fp32 master", "qlora nf4"])
def test_training_on_the_gpu_keeps_every_small_update(mode, overrides, tmp_path, fit_with):
    from tests.test_precision import UpdateWatch

    extra = (["backbone.dtype=float32"] if mode == "full fp32 master" else
             ["backbone.quantization=nf4", "backbone.dtype=bfloat16", "lora.enabled=true", "lora.r=4"])
    watch = UpdateWatch()
    fit_with(compose("demo", [*overrides, *STEPS, *extra, f"run_dir={tmp_path}"]), watch)
    assert all(p.device.type == DEVICE for p in watch.params.values())
    assert all(p.dtype == torch.float32 for p in watch.params.values())
    assert watch.changed_fraction() >= 0.99
    if mode == "qlora nf4":
        from vau.backbones.quantization import linear4bit_modules

        layers = linear4bit_modules(watch.model)
        assert layers and all(m.weight.device.type == DEVICE for m in layers.values())


def test_shared_prompt_logits_on_the_gpu_equal_the_repeated_ones(tiny_backbone, demo_root):
    from tests.test_shared_prompt import G, completions, prompts, repeated_logits
    from vau.datamodules.encoding import model_inputs
    from vau.modules.shared_prompt import completion_logits

    model = tiny_backbone.model.to(DEVICE).eval()
    prompt = {k: v.to(DEVICE) for k, v in model_inputs(prompts(tiny_backbone, demo_root), prompt_only=True).items()}
    ids, mask = (t.to(DEVICE) for t in completions(2 * G))
    kept = mask.bool()
    with torch.no_grad():
        fp32 = (repeated_logits(model, tiny_backbone, prompt, ids, mask, G),
                completion_logits(model, tiny_backbone, prompt, ids, mask, G))
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            bf16 = (repeated_logits(model, tiny_backbone, prompt, ids, mask, G).float(),
                    completion_logits(model, tiny_backbone, prompt, ids, mask, G).float())
    torch.testing.assert_close(fp32[1][kept], fp32[0][kept], rtol=1e-4, atol=1e-4)  # GPU kernels reorder more
    # bf16 keeps 8 significant bits: the two paths round differently, within a few bf16 steps of the logit scale.
    scale = fp32[0][kept].abs().max().item()
    assert (bf16[1][kept] - bf16[0][kept]).abs().max().item() <= 4 * 2**-8 * scale
