"""GRPO step time and memory: the shared-prompt path against the repeated-prompt path, side by side.

One GRPO step = rollout (G completions of every prompt, exactly ``--completion`` tokens each: EOS is held back) ->
reference log-probs (beta > 0) -> policy loss -> backward -> optimiser step, on a real Qwen2.5-VL model built from
a config (random weights: time and memory do not depend on them). The two paths are timed interleaved, step by
step, in one process (this machine's speed drifts over minutes; any other job distorts both alike); peak RSS comes
from a separate process per path (``--rss-steps`` steps), since a process's peak covers everything it ever did.

Settings:
  S  the demo: the tiny twin, 4 frames at 56 x 56 (16 video tokens), the QA prompt.
  R  a realistic vision share: 16 frames at 224 x 224 (512 video tokens, ~750 prompt tokens) on a small model whose
     vision tower costs about as much per video token as its language model, as in Qwen2.5-VL-3B (4 patches of
     a 32-layer, 1280-wide tower per token ~ 5.4 GFLOP against ~6 GFLOP in the 36-layer language model).
  3b / 7b  (``--size``, GPU) Qwen2.5-VL-3B / 7B shapes, fp32 master weights, bf16 autocast, sdpa or flash attention.

Usage:
    python benchmarks/grpo_step.py                              # S and R, G = 4, 8, 16 (CPU)
    python benchmarks/grpo_step.py --setting R --groups 8 --steps 15
    python benchmarks/grpo_step.py --size 3b --device cuda --attn flash_attention_2 --groups 4 8
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

R_SIZES = {"vocab_size": 1024, "text_hidden": 256, "text_layers": 4, "text_heads": 4, "text_kv_heads": 2,
           "text_intermediate": 512, "vision_hidden": 128, "vision_depth": 4, "vision_heads": 2,
           "vision_intermediate": 256}
SETTINGS = {
    "S": {"frames": 4, "side": 56, "sizes": None, "filler": 0},
    "R": {"frames": 16, "side": 224, "sizes": R_SIZES, "filler": 60},
}
FILLER = "The camera watches a street corner where people, cars and bicycles pass by during the day."


def build_backbone(setting: str, size: str | None, device: str, attn: str, cache_dir: str,
                   lora_base_bf16: bool = False):
    """The tiny twin's processor and tokenizer with a model of the setting's shape (random weights)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vau.backbones.qwen import Qwen2_5VLBackbone

    spec = SETTINGS[setting]
    side = spec["side"] if size is None else 224
    cfg = {"cache_dir": cache_dir, "seed": 0, "min_pixels": side * side, "max_pixels": side * side}
    if spec["sizes"] and size is None:
        cfg["sizes"] = spec["sizes"]
    backbone = Qwen2_5VLBackbone.load_tiny(cfg)
    if size is not None:
        sys.path.insert(0, os.path.dirname(__file__))
        from memory import PUBLISHED, build_config

        config = build_config(PUBLISHED[{"3b": "Qwen2.5-VL-3B", "7b": "Qwen2.5-VL-7B"}[size]])
        tiny = backbone.model.config
        for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
            setattr(config, key, getattr(tiny, key))
        config._attn_implementation = attn
        torch.manual_seed(0)
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(config)  # fp32 master weights; bf16 autocast computes
        if lora_base_bf16:
            model = model.to(torch.bfloat16)  # the frozen LoRA base; adapters are made fp32
        model.generation_config = backbone.model.generation_config
        backbone = dataclasses.replace(backbone, model=model)
    backbone.model.to(device)
    return backbone


def prompt_batch(backbone, setting: str, prompts: int, device: str):
    from transformers.video_utils import VideoMetadata

    spec = SETTINGS[setting]
    processor = backbone.processor
    rng = np.random.default_rng(0)
    texts, videos, metas = [], [], []
    for i in range(prompts):
        question = f"Question {i}: what happens in the video? " + " ".join([FILLER] * (spec["filler"] // 15))
        texts.append(processor.apply_chat_template(backbone.chat_messages(question), add_generation_prompt=True))
        videos.append(rng.integers(0, 255, (spec["frames"], spec["side"], spec["side"], 3), dtype=np.uint8))
        metas.append(VideoMetadata(total_num_frames=spec["frames"], fps=2.0, frames_indices=list(range(spec["frames"]))))
    enc = processor(text=texts, videos=videos, video_metadata=metas, return_tensors="pt", padding=True,
                    padding_side="left", do_sample_frames=False)
    return {k: v.to(device) for k, v in enc.items()}


def make_module(backbone, groups: int, completion: int, shared: bool, beta: float, mode: str = "full"):
    from vau.backbones.adapters import LoraSettings, apply_lora
    from vau.modules.grpo import GRPOModule
    from vau.rewards import RewardSet

    if mode == "lora":  # fp32 adapters on the frozen base (bf16 for the real shapes); the vision tower stays frozen
        settings = LoraSettings.from_config({"enabled": True, "r": 16, "alpha": 32, "dropout": 0.0})
        backbone = dataclasses.replace(backbone, model=apply_lora(backbone.model, settings,
                                                                  backbone.vision_module_prefixes,
                                                                  (backbone.lora_targets, backbone.vision_lora_targets)))

    module = GRPOModule(backbone, {"name": "adamw", "lr": 1e-6}, "qa", RewardSet({"format": {"weight": 1.0}}),
                        grpo={"num_generations": groups, "max_new_tokens": completion, "beta": beta,
                              "shared_prompt": shared})
    module.setup("fit")
    return module


class VisionCalls:
    """Counts the videos the vision towers encode (a call over G copies of a clip counts G)."""

    def __init__(self, module, patches_per_video: int) -> None:
        self.patches_per_video = patches_per_video
        self.videos = 0.0
        towers = [module.model] + ([module.ref_model] if module.ref_model is not None else [])
        for model in towers:
            base = getattr(model, "get_base_model", lambda m=model: m)()
            for prefix in module.backbone.vision_module_prefixes:
                base.get_submodule(prefix).register_forward_hook(self._hook)

    def _hook(self, _module, args, _out):
        self.videos += args[0].shape[0] / self.patches_per_video


def one_step(module, prompt, optimizer, completion: int, autocast: bool) -> None:
    """rollout -> (reference) -> loss -> backward -> step, as GRPOModule.training_step, with forced lengths."""
    from vau.modules.grpo import Rollout
    from vau.modules.grpo_loss import completion_mask

    device_type = prompt["input_ids"].device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
        # The module's own rollout sampling, every completion exactly `completion` tokens (max_new_tokens too).
        ids, encoded, repeated = module.sample_completions(prompt, min_new_tokens=completion)
        mask, truncated = completion_mask(ids, module.backbone.eos_token_ids)
        rows = ids.shape[0]
        rollout = Rollout(prompt, ids, mask, truncated, [""] * rows, [None] * rows, [None] * rows,
                          encoded_vision=encoded, repeated=repeated)
        advantages = torch.randn(rows, device=ids.device)
        if module.beta:
            with torch.no_grad(), module.reference_policy() as ref:
                rollout = dataclasses.replace(rollout, ref_logps=module.token_logps(ref, rollout)[0])
        loss, _, _, rollout = module.loss(rollout, advantages)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_pair(args, setting: str, groups: int) -> dict:
    """Both paths on one model: warm-up, then ``--steps`` interleaved timed steps each."""
    backbone = build_backbone(setting, args.size, args.device, args.attn, args.cache_dir, args.mode == "lora")
    prompt = prompt_batch(backbone, setting, args.prompts, args.device)
    result = {"setting": args.size or setting, "G": groups, "prompt_tokens": int(prompt["input_ids"].shape[1]),
              "video_tokens": int((prompt["input_ids"] == backbone.model.config.video_token_id).sum()) // args.prompts}
    modules, optimizers, counters, times = {}, {}, {}, {"shared": [], "repeat": []}
    untouched = copy.deepcopy(backbone.model)  # the repeat path starts from the same weights (and LoRA init)
    for path in ("shared", "repeat"):
        model = backbone.model if path == "shared" else untouched
        modules[path] = make_module(dataclasses.replace(backbone, model=model), groups, args.completion,
                                    path == "shared", args.beta, args.mode)
        model = modules[path].model
        optimizers[path] = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
        counters[path] = VisionCalls(modules[path], prompt["pixel_values_videos"].shape[0] // args.prompts)
    autocast = args.size is not None
    for _ in range(args.warmup):
        for path in ("shared", "repeat"):
            one_step(modules[path], prompt, optimizers[path], args.completion, autocast)
    for path in counters:
        counters[path].videos = 0.0
    for _ in range(args.steps):
        for path in ("shared", "repeat"):
            sync(args.device)
            start = time.perf_counter()
            one_step(modules[path], prompt, optimizers[path], args.completion, autocast)
            sync(args.device)
            times[path].append(time.perf_counter() - start)
    for path in ("shared", "repeat"):
        result[f"{path}_s"] = statistics.median(times[path])
        result[f"{path}_videos_encoded"] = counters[path].videos / args.steps / args.prompts
    result["speedup"] = result["repeat_s"] / result["shared_s"]
    tokens = args.prompts * groups * args.completion
    result["shared_tok_s"] = tokens / result["shared_s"]
    result["repeat_tok_s"] = tokens / result["repeat_s"]
    return result


def peak_memory(args, setting: str, groups: int, path: str) -> float:
    """Peak memory of ``--rss-steps`` steps of one path, in GiB: CUDA's peak allocation, else the process's RSS
    (measured in a fresh process so nothing else raised it)."""
    cmd = [sys.executable, __file__, "--measure-one", json.dumps({"setting": setting, "groups": groups, "path": path}),
           *sys.argv[1:]]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure_one(args, spec: dict) -> None:
    backbone = build_backbone(spec["setting"], args.size, args.device, args.attn, args.cache_dir, args.mode == "lora")
    prompt = prompt_batch(backbone, spec["setting"], args.prompts, args.device)
    module = make_module(backbone, spec["groups"], args.completion, spec["path"] == "shared", args.beta, args.mode)
    optimizer = torch.optim.AdamW([p for p in module.model.parameters() if p.requires_grad], lr=1e-6)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.rss_steps):
        one_step(module, prompt, optimizer, args.completion, args.size is not None)
    if args.device.startswith("cuda"):
        print(torch.cuda.max_memory_allocated() / 1024**3)
    else:
        # VmHWM, the peak RSS of this process's own memory: getrusage's ru_maxrss would also count the parent's
        # RSS at fork time (Linux carries the high-water mark across exec).
        with open("/proc/self/status") as f:
            hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        print(hwm / 1024**2)  # KiB -> GiB


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", nargs="+", default=["S", "R"], choices=sorted(SETTINGS))
    parser.add_argument("--size", choices=["3b", "7b"], default=None, help="real model shape (GPU)")
    parser.add_argument("--groups", nargs="+", type=int, default=[4, 8, 16])
    parser.add_argument("--prompts", type=int, default=1, help="prompts per step (B)")
    parser.add_argument("--completion", type=int, default=32, help="completion tokens, forced")
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--mode", choices=["full", "lora"], default="full",
                        help="full fine-tuning (fp32 master weights, vision trained) or LoRA r=16 (vision frozen)")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per path (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rss-steps", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-path peak-memory processes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, flash_attention_2)")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "vau-bench-cache"))
    parser.add_argument("--out", default=None, help="also write the table (markdown) to this file")
    parser.add_argument("--measure-one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.measure_one:
        measure_one(args, json.loads(args.measure_one))
        return 0
    settings = ["3b" if args.size == "3b" else "7b"] if args.size else args.setting
    mem_unit = "peak CUDA GiB" if args.device.startswith("cuda") else "peak RSS GiB"
    lines = [f"GRPO step, shared prompt vs repeated prompt: {args.prompts} prompt(s) x G, {args.completion} forced "
             f"completion tokens, beta={args.beta}, {args.mode} fine-tuning, device {args.device}, torch threads "
             f"{torch.get_num_threads()}; median of {args.steps} interleaved steps after {args.warmup} warm-up",
             "",
             f"| setting | G | prompt tokens (video) | shared s/step | repeat s/step | speed-up | shared {mem_unit} | "
             f"repeat {mem_unit} | clips encoded per prompt per step, shared | repeat | shared tok/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for setting in settings:
        for groups in args.groups:
            r = run_pair(args, setting if not args.size else "R", groups)
            r["setting"] = setting
            mem = {p: float("nan") if args.no_memory else peak_memory(args, setting if not args.size else "R",
                                                                       groups, p) for p in ("shared", "repeat")}
            line = (f"| {setting} | {groups} | {r['prompt_tokens']} ({r['video_tokens']}) | {r['shared_s']:.3f} | "
                    f"{r['repeat_s']:.3f} | {r['speedup']:.2f}x | {mem['shared']:.2f} | {mem['repeat']:.2f} | "
                    f"{r['shared_videos_encoded']:.0f} | {r['repeat_videos_encoded']:.0f} | {r['shared_tok_s']:.0f} |")
            lines.append(line)
            print(line, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
