"""Memory planning for fine-tuning Qwen2.5-VL: full (fp32 master weights), LoRA and 4-bit QLoRA, SFT or one GRPO step.

From a model config alone (built on the meta device: no weights, no downloads) this computes the bytes of
weights, gradients and AdamW states per mode, and estimates the activation memory of one GRPO policy update with
G generations of a video of F frames. It prints the table for Qwen2.5-VL-3B and -7B (configs written below from
their published config.json), then checks the estimate's trend against peak memory measured on CPU for the tiny
model (live tensors counted with a ``TorchDispatchMode``: no CUDA allocator needed).

Usage:
    python benchmarks/memory.py                      # both tables (the measurement takes ~1 min on 2 cores)
    python benchmarks/memory.py --no-measure         # the 3B/7B table only
    python benchmarks/memory.py --generations 8 --frames 32 --completion 1024

The activation model (bytes kept for backward, per token and decoder layer, activations of ``b`` bytes; sdpa /
flash attention, so no seq x seq scores):
    b * (7h + h_kv + 2I)   q/k/v/attention output, o_proj and MLP inputs, gate/up/act outputs, residuals
  + 8h                     the fp32 upcasts HF's RMSNorm keeps (2 norms per layer)
With gradient checkpointing a layer keeps only its input (b * h per token) and one layer at a time is recomputed.
On top: the completion logits GRPO scores (bf16 logits, fp32 copy, /temperature, log_softmax, exp for the
entropy: ~18 bytes per vocabulary entry per completion token), and the vision tower's activations when it trains
(full fine-tuning), for the G copies of the video vau's GRPO forwards. A frozen vision tower (LoRA/QLoRA without
``lora.vision``) keeps nothing for backward.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

GIB = 1024**3

# From the published config.json of Qwen/Qwen2.5-VL-3B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct.
VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
          "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
          "in_chans": 3, "hidden_act": "silu"}
PUBLISHED = {
    "Qwen2.5-VL-3B": {
        "text": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
                 "num_key_value_heads": 2, "vocab_size": 151936, "rope_theta": 1000000.0,
                 "max_position_embeddings": 128000},
        "vision": {**VISION, "out_hidden_size": 2048},
        "tie_word_embeddings": True,
    },
    "Qwen2.5-VL-7B": {
        "text": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                 "num_key_value_heads": 4, "vocab_size": 152064, "rope_theta": 1000000.0,
                 "max_position_embeddings": 128000},
        "vision": {**VISION, "out_hidden_size": 3584},
        "tie_word_embeddings": False,
    },
}
LM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# full: fp32 master weights, fp32 grads, fp32 AdamW moments, bf16 compute (autocast) on one GPU;
# full-fsdp8: the same states sharded over 8 GPUs by FSDP2 (fp32 shards, bf16 gathered layers), per GPU.
MODES = ("full", "full-fsdp8", "lora", "qlora")
FSDP_RANKS = 8


@dataclass
class Workload:
    """One GRPO policy update on one device: G completions of one prompt with a video."""

    generations: int = 4
    frames: int = 16
    max_pixels: int = 100352  # per frame: vau's default for Qwen2.5-VL (128 x 28 x 28)
    prompt_tokens: int = 128
    completion_tokens: int = 512
    lora_r: int = 16
    act_bytes: int = 2  # bf16 activations
    checkpointing: bool = False

    def video_tokens(self, patch: int = 14, merge: int = 2, temporal: int = 2) -> int:
        """LM tokens of the video after the 2x2 merge (per temporal patch of 2 frames)."""
        return math.ceil(self.frames / temporal) * (self.max_pixels // (patch * merge) ** 2)

    def vision_patches(self, patch: int = 14) -> int:
        """Patch tokens the vision tower runs on, for one copy of the video."""
        return self.frames * (self.max_pixels // patch**2)

    def sequence(self) -> int:
        return self.video_tokens() + self.prompt_tokens + self.completion_tokens


@dataclass
class Counts:
    """Parameter counts of one model, by part."""

    total: int
    vision: int
    lm_linear: int  # decoder-layer linear weights: what NF4 quantises
    lora: dict[int, int] = field(default_factory=dict)  # rank -> adapter parameters on the 7 LM linears

    @property
    def unquantized(self) -> int:
        return self.total - self.lm_linear


def build_config(spec: dict):
    from transformers import Qwen2_5_VLConfig

    text = dict(spec["text"])
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    half = head_dim // 2
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": text.pop("rope_theta"),
                               "mrope_section": [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]}
    return Qwen2_5_VLConfig(text_config=text, vision_config=dict(spec["vision"]),
                            tie_word_embeddings=spec["tie_word_embeddings"])


def count(config, ranks=(16,)) -> Counts:
    """Parameter counts from a config, on the meta device (no memory, no weights)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    if config.tie_word_embeddings:
        model.tie_weights()
    total = sum(p.numel() for p in model.parameters())  # shared (tied) tensors counted once
    from vau.backbones.qwen import Qwen2_5VLBackbone

    vision = sum(p.numel() for prefix in Qwen2_5VLBackbone.vision_module_prefixes
                 for p in model.get_submodule(prefix).parameters())
    lm_linear, lora = 0, {r: 0 for r in ranks}
    for name, module in model.model.language_model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}":
            lm_linear += module.weight.numel()
            if name.rsplit(".", 1)[-1] in LM_TARGETS:
                for r in ranks:
                    lora[r] += r * (module.in_features + module.out_features)
    return Counts(total, vision, lm_linear, lora)


def nf4_bytes_per_param(double_quant: bool = True, block: int = 64, block2: int = 256) -> float:
    """4 bits per weight + the per-block absmax: fp32 per 64 weights, or 8 bit + fp32 per 256 blocks (double quant)."""
    return 0.5 + ((1 + 4 / block2) / block if double_quant else 4 / block)


def state_bytes(c: Counts, mode: str, r: int = 16) -> dict[str, float]:
    """Weights, gradients and AdamW states. Full: fp32 master weights, grads and moments (bf16 weights would lose
    small updates, see vau.modules.optim.check_master_weights); under FSDP2 each GPU holds 1/8 of them. Adapters:
    fp32 (PEFT's default next to a bf16 or 4-bit base), fp32 grads and moments; the frozen base has none."""
    if mode.startswith("full"):
        shards = FSDP_RANKS if mode == "full-fsdp8" else 1
        return {"weights": 4 * c.total / shards, "grads": 4 * c.total / shards, "optimizer": 8 * c.total / shards}
    adapters = c.lora[r]
    base = 2 * c.total if mode == "lora" else nf4_bytes_per_param() * c.lm_linear + 2 * c.unquantized
    return {"weights": base + 4 * adapters, "grads": 4 * adapters, "optimizer": 8 * adapters}


def layer_bytes(h: int, h_kv: int, inter: int, b: int) -> float:
    """Bytes one decoder layer keeps for backward, per token (see the module docstring)."""
    return b * (7 * h + h_kv + 2 * inter) + 8 * h


def activation_bytes(config, w: Workload, mode: str) -> dict[str, float]:
    t, v = config.text_config, config.vision_config
    h, inter, layers = t.hidden_size, t.intermediate_size, t.num_hidden_layers
    h_kv = t.num_key_value_heads * (h // t.num_attention_heads)
    tokens = w.generations * w.sequence()
    per_layer = layer_bytes(h, h_kv, inter, w.act_bytes)
    if w.checkpointing:
        lm = layers * w.act_bytes * h * tokens + per_layer * tokens
    else:
        lm = layers * per_layer * tokens
    logit_bytes = 16 + (w.act_bytes if w.act_bytes != 4 else 0)
    logits = logit_bytes * t.vocab_size * w.generations * (w.completion_tokens + 1)
    vision = 0.0
    if mode.startswith("full"):
        patches = w.generations * w.vision_patches(v.patch_size)
        v_layer = layer_bytes(v.hidden_size, v.hidden_size, v.intermediate_size, w.act_bytes)
        vision = (v.depth * w.act_bytes * v.hidden_size + v_layer if w.checkpointing else v.depth * v_layer) * patches
    kv_cache = 2 * layers * h_kv * w.act_bytes * tokens  # generation, freed before the update
    return {"lm": lm, "vision": vision, "logits": logits, "kv_cache": kv_cache}


def plan(name: str, config, w: Workload) -> list[dict]:
    counts = count(config, ranks=(w.lora_r,))
    rows = []
    for mode in MODES:
        states = state_bytes(counts, mode, w.lora_r)
        acts = activation_bytes(config, w, mode)
        update = acts["lm"] + acts["vision"] + acts["logits"]
        total = sum(states.values()) + max(update, acts["kv_cache"])
        rows.append({"model": name, "mode": mode, "params": counts.total, **states, "activations": update,
                     "total": total})
    return rows


def gib(x: float) -> str:
    return f"{x / GIB:6.1f}"


def print_table(w: Workload) -> None:
    print(f"\nGRPO policy update, G={w.generations} generations, {w.frames} frames at {w.max_pixels} px "
          f"({w.video_tokens()} video tokens, {w.vision_patches()} vision patches per copy), prompt "
          f"{w.prompt_tokens} + completion {w.completion_tokens} tokens, LoRA r={w.lora_r}, bf16 activations. GiB.")
    header = "| model | mode | weights | grads | AdamW | activations (no ckpt) | total | activations (ckpt) | total (ckpt) | fits 24 GB |"
    print(header)
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, spec in PUBLISHED.items():
        config = build_config(spec)
        plain = plan(name, config, Workload(**{**w.__dict__, "checkpointing": False}))
        ckpt = plan(name, config, Workload(**{**w.__dict__, "checkpointing": True}))
        for a, b in zip(plain, ckpt):
            fits = "yes" if a["total"] < 24e9 * 0.9 else ("with ckpt" if b["total"] < 24e9 * 0.9 else "no")
            print(f"| {name} ({a['params'] / 1e9:.2f}B) | {a['mode']} | {gib(a['weights'])} | {gib(a['grads'])} | "
                  f"{gib(a['optimizer'])} | {gib(a['activations'])} | {gib(a['total'])} | {gib(b['activations'])} | "
                  f"{gib(b['total'])} | {fits} |")
    print("\n'fits 24 GB' leaves 10% for the CUDA context, allocator fragmentation and temporaries.")


# -- measurement on the tiny model -------------------------------------------------------------------------------
TINY_SIZES = {"vocab_size": 1024, "text_hidden": 256, "text_layers": 4, "text_heads": 4, "text_kv_heads": 2,
              "text_intermediate": 512, "vision_hidden": 128, "vision_depth": 2, "vision_heads": 2,
              "vision_intermediate": 256}


class LivePeak:
    """Peak bytes of tensors allocated inside the context and still referenced (CPU too; no CUDA allocator needed).

    A ``TorchDispatchMode`` sees every op's outputs; each new storage is counted until the last tensor using it is
    garbage collected. Storages that existed before (parameters, inputs) and views of them are not counted.
    """

    def __init__(self, existing) -> None:
        self.external = {t.untyped_storage().data_ptr() for t in existing}
        self.refs: dict[int, list] = {}  # storage ptr -> [live tensors, bytes]
        self.current = 0
        self.peak = 0

    def _release(self, ptr: int) -> None:
        entry = self.refs.get(ptr)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self.refs[ptr]

    def track(self, out) -> None:
        import weakref

        import torch
        from torch.utils._pytree import tree_flatten

        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr == 0 or ptr in self.external:
                continue
            if ptr not in self.refs:
                self.refs[ptr] = [0, storage.nbytes()]
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            self.refs[ptr][0] += 1
            weakref.finalize(t, self._release, ptr)

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker.track(out)
                return out

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)


def measure_tiny(mode: str, generations: int, frames: int, completion: int = 16, cache_dir: str = "~/.cache/vau",
                 max_pixels: int = 12544) -> dict[str, float]:
    """Bytes of weights, gradients and AdamW states after one GRPO update (vau's real loss code) on the tiny model,
    fp32 on CPU, and the peak of live tensors allocated by its forward pass (what backward will need)."""
    import numpy as np
    import torch
    from transformers.video_utils import VideoMetadata

    from vau.backbones.adapters import setup_training_memory
    from vau.backbones.base import BACKBONES
    from vau.modules.grpo import GRPOModule, Rollout
    from vau.rewards import RewardSet

    cfg = {"cache_dir": cache_dir, "seed": 0, "sizes": TINY_SIZES, "max_pixels": max_pixels, "min_pixels": max_pixels,
           "quantization": "nf4" if mode == "qlora" else None}
    lora = {"enabled": mode != "full", "r": 8, "alpha": 16, "dropout": 0.0}
    backbone = BACKBONES.get("tiny_qwen2_5_vl")(cfg)
    backbone.model = setup_training_memory(backbone.model, cfg, lora, quantized=mode == "qlora",
                                           vision_prefixes=backbone.vision_module_prefixes)
    module = GRPOModule(backbone, {"name": "adamw", "lr": 1e-4}, "qa", RewardSet({"format": {"weight": 1.0}}),
                        grpo={"num_generations": generations, "beta": 0.0, "max_new_tokens": completion,
                              "shared_prompt": False})  # the estimate models the prompt repeated G times
    processor = backbone.processor
    side = int(math.sqrt(max_pixels))
    video = np.random.default_rng(0).integers(0, 255, (frames, side, side, 3), dtype=np.uint8)
    text = processor.apply_chat_template(backbone.chat_messages("What happens?"), add_generation_prompt=True)
    meta = VideoMetadata(total_num_frames=frames, fps=4.0, frames_indices=list(range(frames)))
    enc = processor(text=[text], videos=[video], return_tensors="pt", do_sample_frames=False, video_metadata=[meta])
    inputs = backbone.repeat_vision(dict(enc), generations)
    ids = torch.randint(10, 200, (generations, completion), generator=torch.Generator().manual_seed(0))
    rollout = Rollout(prompt=dict(enc), repeated=inputs, completion_ids=ids, mask=torch.ones(generations, completion),
                      truncated=torch.zeros(generations, dtype=torch.bool), texts=[""] * generations,
                      samples=[None] * generations, durations=[None] * generations)
    advantages = torch.linspace(-1, 1, generations)
    trainable = [p for p in module.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    module.model.train()
    existing = [*module.model.parameters(), *module.model.buffers(), *inputs.values(), ids, rollout.mask]
    with LivePeak(existing) as live:
        loss, _, _, _ = module.loss(rollout, advantages)
        kept = live.current  # what the graph holds for backward (+ the loss)
    loss.backward()
    optimizer.step()

    def nbytes(tensors) -> int:
        seen = {}
        for t in tensors:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return sum(seen.values())

    states = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim()]
    tokens = int(enc["input_ids"].shape[1]) + completion
    return {"param": nbytes(module.model.parameters()), "grad": nbytes(p.grad for p in trainable),
            "opt": nbytes(states), "act": kept, "act_peak": live.peak, "tokens": tokens,
            "config": getattr(backbone.model, "base_model", backbone.model).config}


def tiny_estimate(config, mode: str, generations: int, frames: int, completion: int, max_pixels: int,
                  prompt_tokens: int) -> dict[str, float]:
    cfg = getattr(config, "base_model", None) or config
    w = Workload(generations=generations, frames=frames, max_pixels=max_pixels, prompt_tokens=prompt_tokens,
                 completion_tokens=completion, lora_r=8, act_bytes=4)
    counts = count(cfg, ranks=(8,))
    if mode == "full":  # the CPU run keeps fp32 weights, grads and moments
        states = {"weights": 4 * counts.total, "grads": 4 * counts.total, "optimizer": 8 * counts.total}
    elif mode == "lora":
        a = counts.lora[8]
        states = {"weights": 4 * counts.total + 4 * a, "grads": 4 * a, "optimizer": 8 * a}
    else:
        a = counts.lora[8]
        states = {"weights": nf4_bytes_per_param() * counts.lm_linear + 4 * counts.unquantized + 4 * a,
                  "grads": 4 * a, "optimizer": 8 * a}
    acts = activation_bytes(cfg, w, mode)
    return {**states, "activations": acts["lm"] + acts["vision"] + acts["logits"]}


def print_measurement(cache_dir: str) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    print("\nTiny Qwen2.5-VL (hidden 256, 4 layers, vision 128 x 2), fp32 on CPU, one GRPO update with vau's loss: "
          "measured vs this script's estimate for the same config. KiB. Activations = tensors the forward pass "
          "leaves for backward (counted live with a TorchDispatchMode).")
    print("| mode | G | frames | weights meas/est | grads meas/est | AdamW meas/est | activations meas/est |")
    print("|---|---|---|---|---|---|---|")
    completion, max_pixels = 16, 12544
    for mode, g, f in (("full", 2, 4), ("full", 4, 4), ("full", 4, 8), ("lora", 4, 8), ("qlora", 4, 8)):
        m = measure_tiny(mode, g, f, completion, cache_dir, max_pixels)
        prompt = m["tokens"] - completion - Workload(frames=f, max_pixels=max_pixels).video_tokens()
        e = tiny_estimate(m["config"], mode, g, f, completion, max_pixels, prompt)
        k = 1024
        print(f"| {mode} | {g} | {f} | {m['param'] / k:.0f} / {e['weights'] / k:.0f} | {m['grad'] / k:.0f} / "
              f"{e['grads'] / k:.0f} | {m['opt'] / k:.0f} / {e['optimizer'] / k:.0f} | {m['act'] / k:.0f} / "
              f"{e['activations'] / k:.0f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--max-pixels", type=int, default=100352)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--completion", type=int, default=512)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--no-measure", action="store_true", help="skip the tiny-model measurement on CPU")
    parser.add_argument("--cache-dir", default="~/.cache/vau")
    args = parser.parse_args(argv)
    w = Workload(generations=args.generations, frames=args.frames, max_pixels=args.max_pixels,
                 prompt_tokens=args.prompt, completion_tokens=args.completion, lora_r=args.lora_r)
    print_table(w)
    if not args.no_measure:
        print_measurement(args.cache_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
