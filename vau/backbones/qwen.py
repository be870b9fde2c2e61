"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL behind the :class:`vau.backbones.base.Backbone` interface, and their
registered builders (real checkpoints from ``backbone.path``; tiny offline twins from :mod:`vau.backbones.qwen_tiny`).

Everything vau knows about Qwen-VL lives here: ChatML's ``<|im_end|>``, the vision placeholder tokens, the vision
tower's module name (``model.visual`` in transformers 5), the layout of the vision tensors (all videos' patches in
one ``(N, D)`` block, ``prod(grid_thw)`` rows per video) and the processors' pixel-budget rule.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from vau.backbones import qwen_tiny
from vau.backbones.base import Backbone, _get, check_pixel_budget
from vau.datamodules.video import SizeFn
from vau.registry import BACKBONES

END_OF_TURN = "<|im_end|>"
# A sampled placeholder would make the next forward pass expect one more video/image patch than the inputs hold.
VISION_TOKENS = ("<|video_pad|>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")
# Per modality: (placeholder token attribute of the processor, pixel rows key, grid key, other per-item keys).
MODALITIES = (
    ("video_token_id", "video_processor", "pixel_values_videos", "video_grid_thw", ("second_per_grid_ts",)),
    ("image_token_id", "image_processor", "pixel_values", "image_grid_thw", ()),
)


class QwenVLBackbone(Backbone):
    """What the Qwen-VL generations share; the subclasses differ in model type and tiny twin."""

    text_aligned_keys = ("mm_token_type_ids",)  # 0 text, 1 image, 2 video per token (rope index, generate)
    vision_lora_targets = ("qkv", "proj", "gate_proj", "up_proj", "down_proj")  # the Qwen-ViT blocks' linears

    def frame_size(self) -> tuple[SizeFn | None, str]:
        """The processor's pixel-budget rule (:func:`frame_size_fn`) and the settings it depends on."""
        vp = getattr(self.processor, "video_processor", None)
        size_fn = frame_size_fn(self.processor)
        return size_fn, (f"{getattr(vp, 'size', None)}|{getattr(vp, 'cap_pixels_per_frame', None)}" if size_fn else "")

    vision_module_prefixes = ("model.visual",)
    tiny_sizes = qwen_tiny.DEFAULT_SIZES
    tiny_version = qwen_tiny.TINY_VERSION

    # -- tokens -------------------------------------------------------------------------------------------------
    def _token_id(self, token: str) -> int | None:
        tok = self.processor.tokenizer
        i = tok.convert_tokens_to_ids(token)
        return i if isinstance(i, int) and i >= 0 and i != tok.unk_token_id else None

    @property
    def end_of_turn_id(self) -> int:
        found = self._token_id(END_OF_TURN)
        return found if found is not None else self.processor.tokenizer.eos_token_id

    @property
    def suppressed_token_ids(self) -> list[int]:
        return sorted({i for i in map(self._token_id, VISION_TOKENS) if i is not None})

    # -- vision tensors -----------------------------------------------------------------------------------------
    def _items_per_example(self, inputs: dict[str, torch.Tensor], token_attr: str, sub: str, grid_key: str
                           ) -> list[int]:
        """How many videos (or images) each example holds, from its placeholder tokens: each item contributes
        ``prod(grid_thw) / merge_size**2`` of them, in example order."""
        rows = inputs["input_ids"].shape[0]
        if grid_key not in inputs:
            return [0] * rows
        merge = int(getattr(self.processor, sub).merge_size)
        sizes = (inputs[grid_key].prod(dim=-1) // merge**2).tolist()
        tokens = (inputs["input_ids"] == getattr(self.processor, token_attr)).sum(dim=1).tolist()
        counts, item = [], 0
        for left in tokens:
            start = item
            while left > 0 and item < len(sizes):
                left -= sizes[item]
                item += 1
            if left != 0:
                break
            counts.append(item - start)
        if len(counts) != rows or item != len(sizes):
            raise ValueError(f"{grid_key} ({len(sizes)} items) does not match the placeholder tokens in input_ids")
        return counts

    def slice_vision(self, inputs: dict[str, torch.Tensor], rows: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = [int(r) for r in rows]
        n = inputs["input_ids"].shape[0]
        vision_keys: set[str] = set()
        out: dict[str, torch.Tensor] = {}
        for token_attr, sub, pixels, grid, per_item in MODALITIES:
            vision_keys |= {pixels, grid, *per_item}
            if grid not in inputs:
                continue
            counts = self._items_per_example(inputs, token_attr, sub, grid)
            first = [sum(counts[:r]) for r in range(n)]
            items = [first[r] + k for r in rows for k in range(counts[r])]
            index = torch.tensor(items, dtype=torch.long, device=inputs[grid].device)
            for key in (grid, *per_item):
                if key in inputs:
                    out[key] = inputs[key].index_select(0, index.to(inputs[key].device))
            if pixels not in inputs:  # a layout without pixels (position ids need only the grids)
                continue
            # Patch rows: each item's block of prod(grid_thw) rows moves as a whole.
            lengths = inputs[grid].prod(dim=-1).tolist()
            blocks = torch.split(inputs[pixels], lengths)
            out[pixels] = torch.cat([blocks[i] for i in items]) if items else inputs[pixels][:0]
        for key, value in inputs.items():
            if key not in vision_keys:
                out[key] = value[rows] if isinstance(value, torch.Tensor) and value.dim() else value
        return {key: out[key] for key in inputs if key in out}  # the caller's key order

    def repeat_vision(self, inputs: dict[str, torch.Tensor], times: int) -> dict[str, torch.Tensor]:
        n = inputs["input_ids"].shape[0]
        return self.slice_vision(inputs, [r for r in range(n) for _ in range(int(times))])

    # -- shared-prompt passes (vau.modules.shared_prompt) -------------------------------------------------------
    @staticmethod
    def _vlm(model):
        """The multimodal core under any PEFT wrapper: it owns the vision tower, ``get_rope_index``, ``rope_deltas``."""
        base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
        return base.model

    def position_ids(self, model, prompt, times=1, completion_ids=None, completion_mask=None) -> torch.Tensor:
        full = self.repeat_vision({k: v for k, v in prompt.items() if k not in {m[2] for m in MODALITIES}}, times)
        if completion_ids is not None:
            full = self.append_text(full, completion_ids, completion_mask)
        return self.positions_of(model, full)

    def positions_of(self, model, inputs) -> torch.Tensor:
        # Multimodal RoPE: 3 position rows (time, height, width) over the vision tokens, text after them; pixels
        # are not needed, only the grids.
        pixels = {m[2] for m in MODALITIES}
        kept = {k: v for k, v in inputs.items() if k not in pixels and k != "attention_mask"}
        positions, _ = self._vlm(model).get_rope_index(**kept, attention_mask=inputs["attention_mask"])
        return positions

    def rows_of_positions(self, positions: torch.Tensor, rows: slice, columns: slice) -> torch.Tensor:
        return positions[:, rows, columns]

    def later_videos(self, vision) -> dict[str, torch.Tensor]:
        grid = vision.get("video_grid_thw")
        if grid is None or grid.shape[0] <= 1:
            return {}
        start = int(grid[0].prod())  # the first video's patch rows come first (the processor's layout)
        out = {"pixel_values_videos": vision["pixel_values_videos"][start:], "video_grid_thw": grid[1:]}
        for key in MODALITIES[0][4]:
            if key in vision:
                out[key] = vision[key][1:]
        return out

    def encode_vision(self, model, prompt) -> dict | None:
        vlm = self._vlm(model)
        if "pixel_values_videos" not in prompt or "mm_encoder_outputs" not in inspect.signature(vlm.forward).parameters:
            return None  # Qwen3-VL in transformers 5 takes no precomputed vision outputs
        video = vlm.get_video_features(prompt["pixel_values_videos"], prompt["video_grid_thw"], return_dict=True)
        return {"kwargs": {"mm_encoder_outputs": {"video": video}}, "replaces": ("pixel_values_videos",)}

    def prepare_cached_generation(self, model, prompt, times) -> None:
        # generate() continues from the prefilled cache at position (text position + stored delta), one delta per row.
        # The delta must put the first new token right after the prompt's last position, as the model's own forward
        # and a generate() without a cache do. get_rope_index's own deltas are (highest position + 1 - length): on a
        # long clip the video's time positions (seconds x tokens_per_second) run past the text after it, and
        # continuing from there put every generated token 20+ positions too far (transformers 5.25, 30 s clips).
        pixels = {m[2] for m in MODALITIES}
        full = self.repeat_vision({k: v for k, v in prompt.items() if k not in pixels}, times)
        positions = self.positions_of(model, full)
        # generate() counts a left-padded row's text positions from its first real token (attention mask cumsum);
        # the last column is every row's last prompt token, whose three M-RoPE rows are equal (text)
        real = full["attention_mask"].sum(dim=1, keepdim=True).to(positions.dtype)
        self._vlm(model).rope_deltas = positions[0, :, -1:] + 1 - real

    # -- processor ----------------------------------------------------------------------------------------------
    def configure_processor(self, cfg) -> None:
        """Apply the pixel budget from config (``min_pixels`` / ``max_pixels`` per frame, ``total_pixels`` per
        clip) to the video processor, as the Qwen reference loader (qwen-vl-utils) budgets a clip."""
        vp = getattr(self.processor, "video_processor", None)
        if vp is None:
            return
        lo, hi = _get(cfg, "min_pixels"), _get(cfg, "max_pixels")
        size = dict(vp.size) if getattr(vp, "size", None) else {}
        if lo is not None:
            size["shortest_edge"] = int(lo)
        if hi is not None:
            size["longest_edge"] = int(hi)
        defaults = [k for k, v in (("min_pixels", lo), ("max_pixels", hi)) if v is None]
        # A key left unset keeps the checkpoint's default, which can still exceed the other one.
        check_pixel_budget(size.get("shortest_edge"), size.get("longest_edge"),
                           f" ({', '.join(defaults)} from the processor saved at {self.path})" if defaults else "")
        if lo is not None or hi is not None:
            vp.size = size
        if "cap_pixels_per_frame" in getattr(getattr(vp, "valid_kwargs", None), "__annotations__", {}):
            # Bound the whole clip's pixel cost like the Qwen reference loader does.
            vp.cap_pixels_per_frame = True
            total = _get(cfg, "total_pixels")
            if total:
                # The processor budgets a clip as 0.9 x max_video_tokens merged patches (qwen-vl-utils' rule).
                factor = int(vp.patch_size * vp.merge_size)
                vp.max_video_tokens = max(int(int(total) / (0.9 * factor * factor)), 1)
        elif _get(cfg, "total_pixels"):
            raise ValueError(f"backbone.total_pixels is set but {type(vp).__name__} has no whole-clip pixel budget")
        vp.do_sample_frames = False  # vau's samplers pick the frames; the processor must not resample them


class Qwen2VLBackbone(QwenVLBackbone):
    """Qwen2-VL."""

    model_type = "qwen2_vl"
    example_path = "/models/Qwen2-VL-2B-Instruct"

    @classmethod
    def build_tiny(cls, out_dir: str | Path, seed: int, sizes: dict[str, int]) -> None:
        qwen_tiny.build_qwen2_vl(out_dir, seed, sizes)


class Qwen2_5VLBackbone(QwenVLBackbone):
    """Qwen2.5-VL."""

    model_type = "qwen2_5_vl"
    example_path = "/models/Qwen2.5-VL-3B-Instruct"

    @classmethod
    def build_tiny(cls, out_dir: str | Path, seed: int, sizes: dict[str, int]) -> None:
        qwen_tiny.build_qwen2_5_vl(out_dir, seed, sizes)


class Qwen3VLBackbone(QwenVLBackbone):
    """Qwen3-VL (dense)."""

    model_type = "qwen3_vl"
    example_path = "/models/Qwen3-VL-4B-Instruct"

    @classmethod
    def build_tiny(cls, out_dir: str | Path, seed: int, sizes: dict[str, int]) -> None:
        qwen_tiny.build_qwen3_vl(out_dir, seed, sizes)


@BACKBONES.register("qwen2_5_vl")
def qwen2_5_vl(cfg) -> Qwen2_5VLBackbone:
    """Qwen2.5-VL (3B/7B/32B/72B) from a local checkpoint directory (backbone.path)."""
    return Qwen2_5VLBackbone.load(cfg)


@BACKBONES.register("qwen2_vl")
def qwen2_vl(cfg) -> Qwen2VLBackbone:
    """Qwen2-VL (2B/7B/72B) from a local checkpoint directory (backbone.path)."""
    return Qwen2VLBackbone.load(cfg)


@BACKBONES.register("qwen3_vl")
def qwen3_vl(cfg) -> Qwen3VLBackbone:
    """Qwen3-VL (dense) from a local checkpoint directory (backbone.path)."""
    return Qwen3VLBackbone.load(cfg)


@BACKBONES.register("tiny_qwen2_5_vl")
def tiny_qwen2_5_vl(cfg) -> Qwen2_5VLBackbone:
    """Tiny random Qwen2.5-VL built offline from a seed, cached, then loaded like a real checkpoint (CPU tests/demo)."""
    return Qwen2_5VLBackbone.load_tiny(cfg)


@BACKBONES.register("tiny_qwen2_vl")
def tiny_qwen2_vl(cfg) -> Qwen2VLBackbone:
    """Tiny random Qwen2-VL built offline from a seed, cached, then loaded like a real checkpoint (CPU tests)."""
    return Qwen2VLBackbone.load_tiny(cfg)


@BACKBONES.register("tiny_qwen3_vl")
def tiny_qwen3_vl(cfg) -> Qwen3VLBackbone:
    """Tiny random Qwen3-VL built offline from a seed, cached, then loaded like a real checkpoint (CPU tests)."""
    return Qwen3VLBackbone.load_tiny(cfg)


def frame_size_fn(processor) -> SizeFn | None:
    """The frame size a Qwen-VL video processor will resize a clip to, computed with the processor's own
    ``smart_resize`` and settings (pixel budget ``size``, patch/merge/temporal factors, per-frame cap).

    Returns None for processors without that rule (their frames are then passed on as decoded).
    """
    vp = getattr(processor, "video_processor", processor)
    smart = getattr(sys.modules.get(type(vp).__module__), "smart_resize", None)
    size = getattr(vp, "size", None)
    if smart is None or size is None or not hasattr(vp, "patch_size"):
        return None
    min_pixels = int(size["shortest_edge"] if "shortest_edge" in size else size.get("min_pixels"))
    max_pixels = int(size["longest_edge"] if "longest_edge" in size else size.get("max_pixels"))
    factor = int(vp.patch_size * vp.merge_size)
    temporal = int(getattr(vp, "temporal_patch_size", 2) or 2)
    cap = bool(getattr(vp, "cap_pixels_per_frame", False))
    max_tokens = getattr(vp, "max_video_tokens", None)
    whole_clip = "num_frames" in inspect.signature(smart).parameters  # Qwen3-VL budgets the whole clip

    def size_fn(num_frames: int, height: int, width: int) -> tuple[int, int]:
        budget = max_pixels
        if whole_clip:
            if cap and max_tokens:
                per_frame = max(min(max_tokens * factor * factor, budget // num_frames), int(min_pixels * 1.05))
                budget = per_frame * num_frames
            return tuple(smart(max(num_frames, temporal), height, width, temporal_factor=temporal, factor=factor,
                               min_pixels=min_pixels, max_pixels=budget))
        if cap and max_tokens:  # mirrors Qwen2VLVideoProcessor.resize
            total = int(max_tokens * factor * factor * 0.9)
            budget = max(min(budget, total * temporal // num_frames), int(min_pixels * 1.05))
        return tuple(smart(height, width, factor=factor, min_pixels=min_pixels, max_pixels=budget))

    return size_fn
