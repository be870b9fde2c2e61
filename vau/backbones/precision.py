"""Dtype names of the config (``backbone.dtype``, ``quantization.compute_dtype``, FSDP's mixed-precision policy)."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(name: str | None) -> torch.dtype:
    """The torch dtype a config names (None: float32); an unknown name fails listing the known ones.

    Example:
        >>> resolve_dtype("bf16")
        torch.bfloat16
    """
    if name is None:
        return torch.float32
    try:
        return DTYPES[str(name)]
    except KeyError:
        raise ValueError(f"backbone.dtype={name!r} is not one of {sorted(DTYPES)}") from None
