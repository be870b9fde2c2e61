"""4-bit NF4 loading (QLoRA) with bitsandbytes.

``backbone.quantization=nf4`` loads the language model's linear layers as bitsandbytes ``Linear4bit`` (NF4, with
double quantisation of the block constants by default). The vision tower (the backbone's
``vision_module_prefixes``) and ``lm_head`` stay in ``backbone.dtype`` unless ``backbone.quantize_vision=true``. A 4-bit base cannot be trained
directly: QLoRA trains LoRA adapters on top of it (``lora.enabled=true``, see :mod:`vau.backbones.adapters`).

Config keys (all under ``backbone``):
    quantization: null | nf4
    compute_dtype: dtype the 4-bit matmuls run in (default: ``backbone.dtype``)
    double_quant: quantise the per-block scales too (~0.4 bit/param saved; default true)
    quantize_vision: also quantise the vision tower (default false: it is small and sensitive)

Example:
    >>> kwargs = quantization_kwargs({"quantization": "nf4", "dtype": "bfloat16"}, ("model.visual",))
    >>> kwargs["quantization_config"].bnb_4bit_quant_type, kwargs["quantization_config"].llm_int8_skip_modules
    ('nf4', ['lm_head', 'model.visual'])
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from vau.backbones.precision import resolve_dtype

log = logging.getLogger(__name__)

QUANTIZATIONS = ("nf4",)
# lm_head stays in full precision, as in QLoRA.
ALWAYS_SKIPPED = ("lm_head",)


def _get(cfg, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if hasattr(cfg, "get") else default


def quantization_kwargs(cfg, vision_modules: Sequence[str]) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for ``backbone.quantization`` (null or ``nf4``).

    Args:
        cfg: the ``backbone`` config node (or a dict with the same keys).
        vision_modules: the vision tower's root modules (``Backbone.vision_module_prefixes``), kept out of 4 bit
            unless ``backbone.quantize_vision``.

    Returns:
        ``{}`` without quantisation, else ``quantization_config`` (and a ``device_map`` to this process's GPU
        when CUDA is available: bitsandbytes quantises while the weights move to the device).

    Raises:
        ValueError: an unknown ``backbone.quantization`` value.
        ImportError: bitsandbytes is not installed.
    """
    quant = _get(cfg, "quantization")
    if not quant:
        return {}
    if quant not in QUANTIZATIONS:
        raise ValueError(f"backbone.quantization={quant!r} is not supported; use null or nf4")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ImportError("backbone.quantization=nf4 needs bitsandbytes: pip install bitsandbytes") from err
    from transformers import BitsAndBytesConfig


    compute = resolve_dtype(_get(cfg, "compute_dtype") or _get(cfg, "dtype") or "bfloat16")
    skip = list(ALWAYS_SKIPPED) + ([] if _get(cfg, "quantize_vision", False) else list(vision_modules))
    kwargs: dict[str, Any] = {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=bool(_get(cfg, "double_quant", True)),
            bnb_4bit_compute_dtype=compute,
            llm_int8_skip_modules=skip,
        )
    }
    if torch.cuda.is_available():
        # One full (quantised) copy per data-parallel process, on that process's GPU.
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    return kwargs


def linear4bit_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every bitsandbytes ``Linear4bit`` in ``model`` by qualified name (empty without bitsandbytes)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def prepare_4bit_model(model: torch.nn.Module) -> int:
    """Work around bitsandbytes' CPU-only 4-bit bugs; call right after loading. Returns the 4-bit layer count.

    bitsandbytes 0.50 repacks a 4-bit weight for its AVX512-BF16 CPU kernel on the first eval/no-grad forward.
    That repacked weight (1) crashes for ``in_features < 64`` and (2) breaks any later training forward ("a view
    of a leaf Variable ... in-place"). GRPO alternates no-grad generation with training, so it always hits (2).
    Turning the repacking off per layer avoids both; the flag is only read for inputs on the CPU, and we only
    touch layers whose weights live on the CPU.
    """
    layers = linear4bit_modules(model)
    patched = 0
    for module in layers.values():
        if module.weight.device.type == "cpu":
            module.support_avx512bf16_for_cpu = False
            patched += 1
    if patched:
        log.info("bitsandbytes CPU workaround: disabled AVX512-BF16 weight repacking on %d 4-bit layers", patched)
    return len(layers)
