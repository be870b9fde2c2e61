"""GRPO step time with a look again beside the single-pass step at the same number of frames (issue 20).

Two arms on the long-clip look demo data (30-40 s clips, written to a temp folder), the tiny Qwen2.5-VL, G replies
per prompt, timed interleaved, step by step, in one process:

  look    8 uniform frames; every reply answers, writes <look>[start, end]</look> around the clip's anomaly, is shown
          8 frames of that window as a second video and answers again (conf=demo_grpo_look: multi-turn rollouts;
          the first turn and the loss passes compute each prompt's first video and text once for its G replies)
  single  16 uniform frames; every reply writes the same text without the look tag (conf=demo_grpo_look with
          module.generation.look_again=false sampler.num_frames=16: the shared-prompt rollout and loss)

Within the look arm, each step also times its two halves on both paths, in turn: the rollout with
``module.grpo.shared_prompt`` on (one prefill per prompt for the first turn) and off (the prompt repeated G times),
and the loss passes (reference log-probs, policy log-probs, backward) on the step's own rollout, shared prompt against
whole conversations. The replies are sampled near-greedily (``--temperature``) so both rollouts write the same text.

Settings (``--setting``): S the demo's tiny twin at 56 x 56 per frame (4 video tokens per two frames); R the
realistic vision share of benchmarks/grpo_step.py (224 x 224 per frame: 64 video tokens per two frames, its small
model whose vision tower costs about as much per token as its language model).

Each arm's model is first taught its reply by teacher forcing (a random model would not look), so both arms sample
replies of the same length; time does not depend on what the weights are beyond that. A step is rollout -> rewards
-> reference log-probs -> loss -> backward -> optimiser step, as ``GRPOModule.training_step``.

Usage:
    python benchmarks/look_step.py                      # G = 4, 1 prompt, 6 timed steps per arm, three arms
    python benchmarks/look_step.py --groups 8 --prompts 2 --steps 10
    python benchmarks/look_step.py --setting R --groups 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

FIRST = "<think>The frames do not show what happens there.</think><answer>A</answer>"
FINAL = "<reflect>The window shows the event.</reflect><think>Seen again, it is clear.</think><answer>B</answer>"


def build_arm(name: str, root: Path, cache_dir: str, args):
    from vau.backbones.base import build_backbone
    from vau.components import build_module
    from vau.config import compose
    from vau.datamodules.vau_bench import VAUBenchDataModule

    if args.setting == "R":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from grpo_step import R_SIZES

        side = 224 * 224
        extra = [f"backbone.min_pixels={side}", f"backbone.max_pixels={side}",
                 *(f"+backbone.sizes.{k}={v}" for k, v in R_SIZES.items())]
    else:
        extra = []
    extra += {"look": [], "single": ["module.generation.look_again=false", "sampler.num_frames=16"]}[name]
    cfg = compose("demo_grpo_look", [f"paths.cache_dir={cache_dir}", f"data.root={root}", "data.generate=null",
                                     f"module.grpo.num_generations={args.groups}", f"data.batch_size={args.prompts}",
                                     f"module.grpo.temperature={args.temperature}", "module.grpo.max_new_tokens=96",
                                     "init_from=null",
                                     *extra])
    backbone = build_backbone(cfg.backbone)
    module = build_module(cfg, backbone, root / f"run_{name}")
    data = VAUBenchDataModule(cfg.data, cfg.sampler, backbone, backbone.pad_id, with_target=False)
    data.setup("fit")
    dataset = data.datasets["train"]
    module.train_dataset = lambda: dataset  # what trainer.datamodule gives a fit
    module.setup("fit")  # the frozen reference copy (beta > 0), as a fit makes it
    return module, data, dataset


def teach(module, data, dataset, look: bool, count: int, steps: int) -> float:
    """Teacher forcing until the arm's reply is learnt: the look chain, or the same text without the look."""
    from vau.backbones.tiny import teach_replies
    from vau.datamodules.encoding import model_inputs
    from vau.tasks.base import look_turn

    items = []
    for i in range(count):
        sample = dataset[(0, i)]["sample"]  # as the step's batch asks it (options in that epoch's order)
        if look:
            start, end = sample.interval if sample.interval and not sample.is_normal else (4.0, 8.0)
            window = (max(0.0, float(start) - 2.0), float(end) + 2.0)  # the brief anomaly and 2 s either side
            first = f"{FIRST}<look>[{window[0]:g}, {window[1]:g}]</look>"
            items.append(dataset.look_item((0, i), sample, [(first, window, look_turn(window))], 8, target=FINAL))
        else:
            items.append(dataset.look_item((0, i), sample, [], 16, target=f"{FIRST}\n{FINAL}"))
    batch = data.collate(items)
    return teach_replies(module.model, model_inputs(batch), batch["labels"], max_steps=steps, until=0.005)


def loss_passes(module, rollout) -> float:
    """Seconds for the reference log-probs, the policy's log-probs and loss, and the backward, on ``rollout``."""
    from dataclasses import replace

    advantages = torch.randn(rollout.completion_ids.shape[0], generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    with torch.no_grad(), module.reference_policy() as ref:
        rollout = replace(rollout, ref_logps=module.token_logps(ref, rollout)[0])
    loss, _, _, _ = module.loss(rollout, advantages)
    loss.backward()
    seconds = time.perf_counter() - start
    module.model.zero_grad(set_to_none=True)
    return seconds


def both_paths(module, batch) -> dict:
    """The look step's rollout and loss passes timed with the shared prompt and without, on the same batch."""
    out = {}
    for shared in (True, False):
        module.shared_prompt = shared
        start = time.perf_counter()
        rollout = module.rollout(batch)
        out[f"rollout_{shared}"] = time.perf_counter() - start
        out[f"looked_{shared}"] = sum(bool(row) for row in rollout.looks) / len(rollout.looks)
        if shared:
            kept = rollout
    for shared in (True, False):
        module.shared_prompt = shared
        out[f"loss_{shared}"] = loss_passes(module, kept)
    module.shared_prompt = True
    return out


def one_step(module, batch, optimizer) -> dict:
    from dataclasses import replace

    rollout = module.rollout(batch)
    module.score(rollout)  # the rewards are part of a step's cost; advantages below are random so every group counts
    advantages = torch.randn(rollout.completion_ids.shape[0])
    if module.beta:
        with torch.no_grad(), module.reference_policy() as ref:
            rollout = replace(rollout, ref_logps=module.token_logps(ref, rollout)[0])
    loss, _, _, rollout = module.loss(rollout, advantages)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    looked = module.looked_frames(rollout.looks) if rollout.looks is not None else [0] * len(rollout.texts)
    return {"looked": sum(n > 0 for n in looked) / len(looked), "looked_frames": statistics.mean(looked),
            "tokens": float(rollout.mask.sum(dim=1).mean()),
            "forward_len": int((rollout.conversation or rollout.prompt)["input_ids"].shape[1])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=("S", "R"), default="S")
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--teach-steps", type=int, default=400, help="teacher-forcing steps at most per arm")
    parser.add_argument("--temperature", type=float, default=0.2, help="rollout sampling temperature")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "vau-bench-cache"))
    args = parser.parse_args(argv)
    from vau.data.synthetic import generate

    torch.set_num_threads(1)  # as the demo (torch_threads: 1)
    root = Path(tempfile.mkdtemp(prefix="vau-look-step-"))
    generate(root / "data", n_train=max(4, args.prompts), n_val=1, n_test=1, seed=0, min_seconds=30.0,
             max_seconds=40.0, event_seconds=[1.0, 2.0], cue_seconds=4.0)
    arms, batches, optimizers, times, stats, taught = {}, {}, {}, {}, {}, {}
    for name in ("look", "single"):
        module, data, dataset = build_arm(name, root / "data", args.cache_dir, args)
        taught[name] = left = teach(module, data, dataset, name == "look", max(4, args.prompts), args.teach_steps)
        print(f"{name}: taught to loss {left:.4f}", flush=True)
        arms[name] = module
        batches[name] = data.collate([dataset[(0, i)] for i in range(args.prompts)])
        optimizers[name] = torch.optim.AdamW(module.model.parameters(), lr=1e-6)
        times[name], stats[name] = [], []
    for step in range(args.warmup + args.steps):
        for name, module in arms.items():
            start = time.perf_counter()
            out = one_step(module, batches[name], optimizers[name])
            elapsed = time.perf_counter() - start
            if name == "look":
                out.update(both_paths(module, batches[name]))
            if step >= args.warmup:
                times[name].append(elapsed)
                stats[name].append(out)
    lines = [f"GRPO step with a look (8 + 8 frames) vs single pass (16 frames): setting {args.setting}, {args.prompts} "
             f"prompt(s) x G = {args.groups}, torch threads 1; median of {args.steps} interleaved steps after "
             f"{args.warmup} warm-up", "",
             "| arm | s/step | replies that looked | looked-at frames per reply | frames per reply | loss tokens per "
             "reply | forward length (tokens) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in arms:
        s = stats[name]
        frames = 8 + statistics.mean(x["looked_frames"] for x in s) if name == "look" else 16
        lines.append(f"| {name} | {statistics.median(times[name]):.3f} | {statistics.mean(x['looked'] for x in s):.2f} | "
                     f"{statistics.mean(x['looked_frames'] for x in s):.1f} | {frames:.1f} | "
                     f"{statistics.mean(x['tokens'] for x in s):.0f} | {max(x['forward_len'] for x in s)} |")
    lines += ["", f"look / single step time: {statistics.median(times['look']) / statistics.median(times['single']):.2f}x",
              f"taught to loss: look {taught['look']:.4f}, single {taught['single']:.4f}", "",
              "The look step's halves on both paths (same batch, in turn; median s):", "",
              "| half | shared prompt | prompt repeated / whole conversations | ratio |", "|---|---:|---:|---:|"]
    look = stats["look"]
    for half, label in (("rollout", "rollout (turns generated)"), ("loss", "loss passes (reference, policy, backward)")):
        a, b = (statistics.median(x[f"{half}_{flag}"] for x in look) for flag in (True, False))
        lines.append(f"| {label} | {a:.3f} | {b:.3f} | {a / b:.2f} |")
    lines.append(f"replies that looked in those rollouts: shared {statistics.mean(x['looked_True'] for x in look):.2f}, "
                 f"repeated {statistics.mean(x['looked_False'] for x in look):.2f}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
