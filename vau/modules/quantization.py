"""4-bit NF4 loading (QLoRA) with bitsandbytes."""

from __future__ import annotations

from typing import Any


def quantization_kwargs(cfg) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for ``backbone.quantization`` (null or ``nf4``)."""
    quant = cfg.get("quantization") if hasattr(cfg, "get") else None
    if not quant:
        return {}
    if quant != "nf4":
        raise ValueError(f"backbone.quantization={quant!r} is not supported; use null or nf4")
    raise NotImplementedError("backbone.quantization=nf4 (QLoRA) is not built yet; see issue 'Low-VRAM and multi-GPU'")
