"""Backbone registry: builders that load a video VLM and its processor from a local directory.

Every builder takes the ``backbone`` config node and returns a :class:`Backbone`. Checkpoints are only ever
read from disk (``backbone.path``): nothing is downloaded.

Example:
    >>> bb = BACKBONES.get("qwen2_5_vl")({"path": "/models/Qwen2.5-VL-3B-Instruct", "dtype": "bfloat16"})  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vau.registry import BACKBONES

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class Backbone:
    model: torch.nn.Module
    processor: Any
    family: str  # qwen2_vl | qwen2_5_vl | qwen3_vl
    path: str

    @property
    def pad_id(self) -> int:
        tok = self.processor.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def _get(cfg: Mapping | Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if isinstance(cfg, Mapping) or hasattr(cfg, "get") else default


def resolve_dtype(name: str | None) -> torch.dtype:
    if name is None:
        return torch.float32
    try:
        return DTYPES[str(name)]
    except KeyError:
        raise ValueError(f"backbone.dtype={name!r} is not one of {sorted(DTYPES)}") from None


def configure_processor(processor, cfg) -> None:
    """Apply the pixel budget from config (``min_pixels`` / ``max_pixels`` per frame) to the video processor."""
    vp = getattr(processor, "video_processor", None)
    if vp is None:
        return
    lo, hi = _get(cfg, "min_pixels"), _get(cfg, "max_pixels")
    if lo is not None or hi is not None:
        size = dict(vp.size) if getattr(vp, "size", None) else {}
        if lo is not None:
            size["shortest_edge"] = int(lo)
        if hi is not None:
            size["longest_edge"] = int(hi)
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


def load_pretrained(cfg, family: str, model_class: str = "AutoModelForImageTextToText") -> Backbone:
    """Load model + processor from ``cfg.path`` with dtype and attention implementation from config."""
    import transformers

    path = _get(cfg, "path")
    if not path:
        raise ValueError(
            f"backbone.path is not set: point it at a local {family} checkpoint directory, "
            f"e.g. backbone.path=/models/Qwen2.5-VL-3B-Instruct (nothing is downloaded)"
        )
    if not Path(path).is_dir():
        raise FileNotFoundError(f"backbone.path={path} is not a directory holding a {family} checkpoint")
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(_get(cfg, "dtype", "bfloat16"))}
    if _get(cfg, "attn_implementation"):
        kwargs["attn_implementation"] = _get(cfg, "attn_implementation")
    from vau.modules.quantization import prepare_4bit_model, quantization_kwargs

    kwargs.update(quantization_kwargs(cfg))
    model = getattr(transformers, model_class).from_pretrained(path, local_files_only=True, **kwargs)
    if "quantization_config" in kwargs:
        prepare_4bit_model(model)  # bitsandbytes CPU workaround, right after loading (see its docstring)
    got = getattr(model.config, "model_type", "")
    if got != family:
        log.warning("backbone %s expects model_type %r but %s holds %r", family, family, path, got)
    processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
    configure_processor(processor, cfg)
    return Backbone(model=model, processor=processor, family=got or family, path=str(path))


@BACKBONES.register("qwen2_5_vl")
def qwen2_5_vl(cfg) -> Backbone:
    """Qwen2.5-VL (3B/7B/32B/72B) from a local checkpoint directory (backbone.path)."""
    return load_pretrained(cfg, "qwen2_5_vl")


@BACKBONES.register("qwen2_vl")
def qwen2_vl(cfg) -> Backbone:
    """Qwen2-VL (2B/7B/72B) from a local checkpoint directory (backbone.path)."""
    return load_pretrained(cfg, "qwen2_vl")


@BACKBONES.register("qwen3_vl")
def qwen3_vl(cfg) -> Backbone:
    """Qwen3-VL (dense) from a local checkpoint directory (backbone.path)."""
    return load_pretrained(cfg, "qwen3_vl")


@BACKBONES.register("tiny_qwen2_5_vl")
def tiny_qwen2_5_vl(cfg) -> Backbone:
    """Tiny random Qwen2.5-VL built offline from a seed, cached, then loaded like a real checkpoint (CPU tests/demo)."""
    from vau.modules.tiny import ensure_tiny_checkpoint

    cache = _get(cfg, "cache_dir") or "~/.cache/vau"
    path = ensure_tiny_checkpoint(cache, seed=int(_get(cfg, "seed", 0)), sizes=dict(_get(cfg, "sizes") or {}))
    merged = {k: _get(cfg, k) for k in ("dtype", "attn_implementation", "min_pixels", "max_pixels", "total_pixels",
                                        "quantization",
                                        "compute_dtype", "double_quant", "quantize_vision")}
    merged["path"] = str(path)
    merged["dtype"] = merged["dtype"] or "float32"
    return load_pretrained(merged, "qwen2_5_vl")


def build_backbone(cfg, lora=None) -> Backbone:
    """Load the backbone named by ``cfg.name``; then LoRA/QLoRA adapters and gradient checkpointing.

    Args:
        cfg: the ``backbone`` config node.
        lora: the root ``lora`` config node; adapters are added when ``lora.enabled`` is true.
    """
    backbone = BACKBONES.get(_get(cfg, "name"))(cfg)
    from vau.modules.adapters import setup_training_memory

    backbone.model = setup_training_memory(backbone.model, cfg, lora, quantized=bool(_get(cfg, "quantization")))
    return backbone
