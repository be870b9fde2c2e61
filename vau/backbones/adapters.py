"""LoRA adapters (with or without a 4-bit base: QLoRA) and gradient checkpointing that reaches them.

Config: the root ``lora`` node (see ``conf/config.yaml``)::

    lora:
      enabled: false
      r: 16
      alpha: 32
      dropout: 0.05
      target_modules: null           # language-model linears; null = the backbone's (Backbone.lora_targets)
      vision: false                  # also adapt the vision tower
      vision_target_modules: null    # null = the backbone's (Backbone.vision_lora_targets)
      seed: ${seed}                  # the adapters' random init

and under ``backbone``: ``gradient_checkpointing`` (bool) and ``gradient_checkpointing_reentrant`` (bool).

Target names are matched against the *last* component of each linear layer's name, separately for the language
model and the vision tower (the modules under the backbone's ``vision_module_prefixes``): vision blocks may also
have ``gate_proj/up_proj/down_proj``, so a plain PEFT suffix list would silently adapt the vision tower too. The
resolved full names are handed to PEFT.

Example (a loaded backbone)::

    model = apply_lora(backbone.model, LoraSettings(enabled=True, r=8, alpha=16), backbone.vision_module_prefixes)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

log = logging.getLogger(__name__)

LM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # Llama-style LMs


@dataclass
class LoraSettings:
    """The ``lora`` config node, validated."""

    enabled: bool = False
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: the backbone's lora_targets
    vision: bool = False
    vision_target_modules: list[str] | None = None  # None: the backbone's vision_lora_targets
    seed: int = 0

    @classmethod
    def from_config(cls, cfg) -> LoraSettings:
        if cfg is None:
            return cls()
        data = dict(cfg.items()) if hasattr(cfg, "items") else {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown lora key(s) {unknown}; known: {sorted(known)}")
        settings = cls(**{k: _plain(v) for k, v in data.items()})
        if settings.enabled and int(settings.r) < 1:
            raise ValueError(f"lora.r={settings.r} must be >= 1")
        if settings.enabled and not (0.0 <= float(settings.dropout) < 1.0):
            raise ValueError(f"lora.dropout={settings.dropout} must be in [0, 1)")
        return settings


def _plain(value: Any) -> Any:
    # OmegaConf ListConfig -> list, so dataclass fields hold plain Python values.
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") or hasattr(value, "keys"):
        return value
    return list(value)


def _is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear)  # bitsandbytes' Linear4bit subclasses nn.Linear


def in_vision(name: str, prefixes: Sequence[str]) -> bool:
    """Whether module ``name`` lies in the vision tower rooted at one of ``prefixes``; also inside a wrapper
    (e.g. PEFT's ``base_model.model.`` in front)."""
    dotted = f".{name}."
    return any(dotted.find(f".{p}.") != -1 for p in prefixes)


def resolve_targets(model: torch.nn.Module, settings: LoraSettings, vision_prefixes: Sequence[str],
                    defaults: tuple[Sequence[str], Sequence[str]] = (LM_TARGETS, ())) -> list[str]:
    """Full module names of the linear layers to adapt (language model targets, plus vision ones if asked).

    Args:
        model: the loaded model.
        settings: the validated ``lora`` node.
        vision_prefixes: the vision tower's root modules (``Backbone.vision_module_prefixes``).
        defaults: (language-model, vision) target names for settings left at None (``Backbone.lora_targets``,
            ``Backbone.vision_lora_targets``).
    """
    if not vision_prefixes:
        raise ValueError("vision_prefixes is empty: the backbone must name its vision tower's modules")
    lm = set(settings.target_modules if settings.target_modules is not None else defaults[0])
    vision = set(settings.vision_target_modules if settings.vision_target_modules is not None else defaults[1])
    names = []
    for name, module in model.named_modules():
        if not _is_linear(module) or name.endswith("lm_head"):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if in_vision(name, vision_prefixes):
            if settings.vision and leaf in vision:
                names.append(name)
        elif leaf in lm:
            names.append(name)
    if not names:
        raise ValueError(f"lora.target_modules={sorted(lm)} matched no linear layer of {type(model).__name__}; "
                         f"name the last component of its linear layers, e.g. {list(LM_TARGETS)}")
    if settings.vision and not any(in_vision(n, vision_prefixes) for n in names):
        raise ValueError(f"lora.vision=true but lora.vision_target_modules={sorted(vision)} matched no linear layer "
                         f"of the vision tower; name the last component of its linear layers")
    return names


def enable_gradient_checkpointing(model: torch.nn.Module, reentrant: bool = False) -> None:
    """Recompute activations in backward, in a way that still gives adapters their gradients.

    Reentrant checkpointing only back-propagates into a block whose *inputs* require grad; with a frozen base the
    embeddings' outputs do not, the loss has no graph and backward fails with "element 0 of tensors does not
    require grad" (or adapters silently get none). The non-reentrant variant (default) has no such condition. For
    the reentrant one, ``enable_input_require_grads`` makes the input embeddings' outputs require grad; in
    transformers 5 it hooks every sub-model's input embeddings, the vision tower's patch embedding included.
    """
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": bool(reentrant)})
    if not getattr(model, "_require_grads_hooks", None):  # transformers 5 already did it for input_ids models
        model.enable_input_require_grads()


def apply_lora(model: torch.nn.Module, settings: LoraSettings, vision_prefixes: Sequence[str],
               defaults: tuple[Sequence[str], Sequence[str]] = (LM_TARGETS, ())) -> torch.nn.Module:
    """Wrap ``model`` in a PEFT LoRA model; only adapter weights stay trainable (see :func:`resolve_targets`)."""
    from peft import LoraConfig, get_peft_model

    targets = resolve_targets(model, settings, vision_prefixes, defaults)
    config = LoraConfig(r=int(settings.r), lora_alpha=float(settings.alpha), lora_dropout=float(settings.dropout),
                        target_modules=targets, bias="none")
    # The adapters' random init comes from lora.seed alone, whatever drew from the global RNG before (e.g. building
    # a checkpoint), and it leaves the global RNG stream untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(settings.seed))
        peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    log.info("LoRA r=%s on %d layers (%s vision): %d trainable of %d parameters (%.2f%%)", settings.r, len(targets),
             sum(in_vision(t, vision_prefixes) for t in targets), trainable, total, 100.0 * trainable / max(total, 1))
    return peft_model


def setup_training_memory(model: torch.nn.Module, backbone_cfg, lora_cfg, quantized: bool, *,
                          vision_prefixes: Sequence[str],
                          lora_targets: tuple[Sequence[str], Sequence[str]] = (LM_TARGETS, ())) -> torch.nn.Module:
    """Apply LoRA (if ``lora.enabled``) and gradient checkpointing (if ``backbone.gradient_checkpointing``).

    Args:
        model: the loaded HF model.
        backbone_cfg: the ``backbone`` config node.
        lora_cfg: the ``lora`` config node (or None).
        quantized: the model was loaded in 4 bit (then LoRA is required).
        vision_prefixes: the vision tower's root modules (``Backbone.vision_module_prefixes``).

    Returns:
        The model to train (a ``PeftModel`` when LoRA is on).
    """
    settings = LoraSettings.from_config(lora_cfg)
    get: Any = backbone_cfg.get if hasattr(backbone_cfg, "get") else (lambda k, d=None: d)
    if quantized and not settings.enabled:
        raise ValueError("backbone.quantization=nf4 freezes the base model in 4 bit, so only adapters can be trained: "
                         "set lora.enabled=true (QLoRA), or backbone.quantization=null for full fine-tuning")
    if get("gradient_checkpointing", False):
        enable_gradient_checkpointing(model, reentrant=bool(get("gradient_checkpointing_reentrant", False)))
    if settings.enabled:
        model = apply_lora(model, settings, vision_prefixes, lora_targets)
    return model


def uses_adapters(model: torch.nn.Module) -> bool:
    """True for a PEFT model with at least one adapter."""
    return hasattr(model, "disable_adapter") and bool(getattr(model, "peft_config", None))
