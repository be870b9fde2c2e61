"""The backbone interface: a loaded video VLM + processor, and everything generic code needs to know about it.

Generic code (modules, data encoding, adapters, quantisation) never names a model family's tokens, modules or
tensor keys; it asks the :class:`Backbone`. Each family implements the interface once (Qwen-VL: :mod:`vau.backbones.qwen`)
and registers its builders in :data:`vau.registry.BACKBONES`. A builder takes the ``backbone`` config node and
returns a loaded :class:`Backbone`. Checkpoints are only ever read from disk (``backbone.path``): nothing is
downloaded. Every family also knows how to build a tiny random offline twin of itself (tests, demo, CPU benchmarks).

Example (a real checkpoint on local disk)::

    bb = BACKBONES.get("qwen2_5_vl")({"path": "/models/Qwen2.5-VL-3B-Instruct", "dtype": "bfloat16"})
    bb.eos_token_ids   # [151645, 151643]
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from vau.backbones.adapters import setup_training_memory
from vau.backbones.precision import resolve_dtype
from vau.backbones.quantization import prepare_4bit_model, quantization_kwargs
from vau.backbones.tiny import ensure_checkpoint
from vau.registry import BACKBONES

log = logging.getLogger(__name__)

def _get(cfg: Mapping | Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if isinstance(cfg, Mapping) or hasattr(cfg, "get") else default


def config_dict(cfg: Mapping | Any) -> dict[str, Any]:
    """A plain dict of a config node's keys, interpolations resolved and ``???`` (missing) values as None."""
    if cfg is None:
        return {}
    return {k: _get(cfg, k) for k in cfg.keys()}


def check_pixel_budget(min_pixels: int | None, max_pixels: int | None, where: str = "") -> None:
    """Refuse a per-frame pixel range that is empty: processors silently let the minimum win (tiny frames)."""
    if min_pixels is not None and max_pixels is not None and int(min_pixels) > int(max_pixels):
        raise ValueError(
            f"backbone.min_pixels={min_pixels} > backbone.max_pixels={max_pixels}{where}: the processor would "
            f"silently use the minimum. Lower backbone.min_pixels or raise backbone.max_pixels.")


@dataclass
class Backbone(ABC):
    """A loaded video VLM and its processor, plus the family-specific facts generic code needs.

    Subclasses (one per model family) set the class attributes and implement the abstract members. Build one
    with :meth:`load` (a checkpoint directory) or :meth:`load_tiny` (the cached tiny random twin).

    Attributes:
        model: the Hugging Face model (a ``PeftModel`` once LoRA is applied).
        processor: its processor (tokenizer + image/video processors + chat template).
        family: the checkpoint's ``model_type`` (e.g. ``qwen2_5_vl``).
        path: the checkpoint directory it was loaded from.
    """

    model: torch.nn.Module
    processor: Any
    family: str
    path: str

    #: ``model_type`` of the checkpoints this class loads (a different one is logged as a warning).
    model_type: ClassVar[str] = ""
    #: A typical checkpoint directory, for error messages.
    example_path: ClassVar[str] = "/models/CHECKPOINT"
    #: The transformers auto class that loads the model.
    model_class: ClassVar[str] = "AutoModelForImageTextToText"
    #: Qualified names of the vision tower's root modules: LoRA keeps them apart from the language model and
    #: 4-bit loading skips them (see :mod:`vau.backbones.adapters`, :mod:`vau.backbones.quantization`).
    vision_module_prefixes: ClassVar[tuple[str, ...]] = ()
    #: LoRA target names (last component of a linear layer's name) in the language model and in the vision tower,
    #: used where ``lora.target_modules`` / ``lora.vision_target_modules`` are null.
    lora_targets: ClassVar[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    vision_lora_targets: ClassVar[tuple[str, ...]] = ()
    #: Processor outputs with one entry per text token besides ``input_ids`` / ``attention_mask`` (e.g. a modality
    #: id per token): generic code pads them like the ids and extends them with zeros for text it appends.
    text_aligned_keys: ClassVar[tuple[str, ...]] = ()
    #: Default sizes of the tiny twin; ``backbone.sizes`` overrides them. Part of the twin's cache key.
    tiny_sizes: ClassVar[dict[str, int]] = {}
    #: Bump when a twin's tokenizer corpus or architecture changes: invalidates cached twins of this family.
    tiny_version: ClassVar[int] = 1

    # -- frames -------------------------------------------------------------------------------------------------
    def frame_size(self) -> tuple[Any, str]:
        """``(size_fn, key)``: ``size_fn(num_frames, height, width) -> (height, width)`` is the size the processor
        will resize a clip to (decoding resizes to it right away, ``data.decode_resize``), ``key`` names the settings
        it depends on (frame-cache keys); ``(None, "")`` when frames go to the processor as decoded."""
        return None, ""

    # -- tokens -------------------------------------------------------------------------------------------------
    @property
    def text_keys(self) -> tuple[str, ...]:
        """The model-input keys laid out per text token (the rest are vision inputs)."""
        return ("input_ids", "attention_mask", *self.text_aligned_keys)

    def append_text(self, inputs: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor) -> dict:
        """``inputs`` with the tokens ``ids`` (attention ``mask``) appended to every row: the text-aligned keys get
        zeros (plain text) for them; vision inputs are unchanged."""
        out = dict(inputs)
        out["input_ids"] = torch.cat([inputs["input_ids"], ids], dim=1)
        out["attention_mask"] = torch.cat([inputs["attention_mask"], mask.to(inputs["attention_mask"].dtype)], dim=1)
        for key in self.text_aligned_keys:
            if key in inputs:
                out[key] = torch.cat([inputs[key], torch.zeros_like(ids, dtype=inputs[key].dtype)], dim=1)
        return out

    @property
    def pad_id(self) -> int:
        tok = self.processor.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    @property
    def eos_token_ids(self) -> list[int]:
        """Every id that ends a completion: the generation config's (an int or a list), the tokenizer's, and
        :attr:`end_of_turn_id` (SFT teaches the model to close its reply with it, whatever the checkpoint's
        generation config says). Deduplicated, in that order."""
        generation = getattr(self.model, "generation_config", None)
        configured = getattr(generation, "eos_token_id", None)
        ids = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
        ids += [self.processor.tokenizer.eos_token_id, self.end_of_turn_id]
        return list(dict.fromkeys(int(i) for i in ids if i is not None))

    @property
    @abstractmethod
    def end_of_turn_id(self) -> int:
        """The id that closes an assistant turn: appended to every SFT target."""

    @property
    @abstractmethod
    def suppressed_token_ids(self) -> list[int]:
        """Ids generation must never sample (e.g. vision placeholders: one in a completion breaks the next forward)."""

    # -- prompts ------------------------------------------------------------------------------------------------
    def chat_messages(self, prompt: str, system_prompt: str | None = None) -> list[dict]:
        """Chat messages for one video and a text prompt, as the processor's chat template expects them.

        The default is the Hugging Face multimodal format (a video part, then the text); override it for a
        template that wants another layout.
        """
        msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
        msgs.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]})
        return msgs

    def look_messages(self, reply: str, text: str) -> list[dict]:
        """The messages that follow a reply when the model looks again: the reply as the assistant's turn, then a user
        turn with the looked-at frames (a second video) and ``text`` (``generation.look_again``). The default is the
        Hugging Face multimodal layout of :meth:`chat_messages`; the processor renders the whole conversation."""
        return [{"role": "assistant", "content": [{"type": "text", "text": reply}]},
                {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]

    def follow_up_ids(self, text: str) -> list[int]:
        """Token ids that close an assistant reply and ask ``text`` in a new user turn, ending where the next reply
        starts (the chat template's own layout, e.g. ``<|im_end|> user ... assistant``).

        Two-pass self-correction (``generation.self_correct``) appends them to a first reply (without its closing
        token) to ask for a second one in the same context, video included.
        """
        mark = "\u2063vau-reply\u2063"  # a string no template writes: where the first reply sits
        messages = [{"role": "user", "content": [{"type": "text", "text": "question"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": mark}]},
                    {"role": "user", "content": [{"type": "text", "text": text}]}]
        rendered = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if rendered.count(mark) != 1:
            raise ValueError(f"{type(self).__name__}: the chat template does not render an assistant turn as given; "
                             f"override follow_up_ids for this backbone")
        tail = rendered.split(mark, 1)[1]
        return list(self.processor.tokenizer(tail, add_special_tokens=False)["input_ids"])

    # -- vision tensors -----------------------------------------------------------------------------------------
    @abstractmethod
    def repeat_vision(self, inputs: dict[str, torch.Tensor], times: int) -> dict[str, torch.Tensor]:
        """Model inputs with every example repeated ``times`` times consecutively, its vision tensors included."""

    @abstractmethod
    def slice_vision(self, inputs: dict[str, torch.Tensor], rows: Sequence[int]) -> dict[str, torch.Tensor]:
        """Model inputs of the examples ``rows`` (in that order, repeats allowed), their vision tensors included."""

    # -- shared-prompt passes (vau.modules.shared_prompt) -------------------------------------------------------
    def position_ids(self, model, prompt: dict[str, torch.Tensor], times: int = 1,
                     completion_ids: torch.Tensor | None = None,
                     completion_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Position ids of ``prompt`` repeated ``times`` times per example (+ completions), exactly as the model's
        own forward computes them without explicit ids; indexed by :meth:`rows_of_positions`.

        The default is what a text decoder uses without a cache: 0..length-1 on every row.
        """
        rows = prompt["input_ids"].shape[0] * int(times)
        length = prompt["input_ids"].shape[1] + (0 if completion_ids is None else completion_ids.shape[1])
        return torch.arange(length, device=prompt["input_ids"].device).expand(rows, length)

    def positions_of(self, model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Position ids of whole model inputs (ids, attention mask, vision inputs), as the model's own forward computes
        them without explicit ids; indexed by :meth:`rows_of_positions`. The default: 0..length-1 on every row."""
        rows, length = inputs["input_ids"].shape
        return torch.arange(length, device=inputs["input_ids"].device).expand(rows, length)

    def rows_of_positions(self, positions: torch.Tensor, rows: slice, columns: slice) -> torch.Tensor:
        """The position ids of some rows and columns (a backbone's ids may carry a leading axis, e.g. M-RoPE)."""
        return positions[rows, columns]

    def later_videos(self, vision: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """The vision inputs of one example's videos after its first (a look conversation's looked-at windows; ``{}``
        when it has one video), in the layout the model takes for them alone; None when this backbone cannot split
        them (GRPO with looks then runs each conversation whole instead of sharing its first prompt)."""
        return None

    def encode_vision(self, model, prompt: dict[str, torch.Tensor]) -> dict[str, Any] | None:
        """The vision tower's outputs for ``prompt``, as ``{"kwargs": forward kwargs, "replaces": pixel keys}``, to
        reuse across passes while the tower is frozen; None when the model cannot take precomputed outputs."""
        return None

    def prepare_cached_generation(self, model, prompt: dict[str, torch.Tensor], times: int) -> None:
        """Set whatever model state ``generate`` needs to continue ``times`` rows per prompt from a prefilled cache
        (none by default: a text decoder reads its positions from the cache)."""
        return None

    # -- loading ------------------------------------------------------------------------------------------------
    @classmethod
    def validate_config(cls, cfg) -> None:
        """Check a ``backbone`` config node before anything is loaded.

        Raises:
            ValueError: ``backbone.path`` unset, an unknown ``backbone.dtype``, or ``min_pixels > max_pixels``.
            FileNotFoundError: ``backbone.path`` is not a checkpoint directory (no ``config.json``).
        """
        path = _get(cfg, "path")
        if not path:
            raise ValueError(
                f"backbone.path is not set: point it at a local {cls.model_type} checkpoint directory, "
                f"e.g. backbone.path={cls.example_path} (nothing is downloaded)")
        resolve_dtype(_get(cfg, "dtype", "bfloat16"))
        check_pixel_budget(_get(cfg, "min_pixels"), _get(cfg, "max_pixels"))
        if not (Path(path) / "config.json").is_file():
            what = "holds no config.json" if Path(path).is_dir() else "is not a directory"
            raise FileNotFoundError(f"backbone.path={path} {what}: point it at a {cls.model_type} checkpoint directory")

    @abstractmethod
    def configure_processor(self, cfg) -> None:
        """Apply the config's pixel budget (``min_pixels`` / ``max_pixels`` per frame, ``total_pixels`` per clip)
        to the processor; refuse an empty range (``ValueError`` naming both keys)."""

    @classmethod
    def load(cls, cfg) -> Backbone:
        """Load model + processor from ``cfg.path`` with the config's dtype, attention and quantisation."""
        import transformers

        cls.validate_config(cfg)
        path = str(_get(cfg, "path"))
        kwargs: dict[str, Any] = {"dtype": resolve_dtype(_get(cfg, "dtype", "bfloat16"))}
        if _get(cfg, "attn_implementation"):
            kwargs["attn_implementation"] = _get(cfg, "attn_implementation")
        kwargs.update(quantization_kwargs(cfg, cls.vision_module_prefixes))
        model = getattr(transformers, cls.model_class).from_pretrained(path, local_files_only=True, **kwargs)
        if "quantization_config" in kwargs:
            prepare_4bit_model(model)  # bitsandbytes CPU workaround, right after loading (see its docstring)
        got = getattr(model.config, "model_type", "")
        if got != cls.model_type:
            log.warning("backbone %s expects model_type %r but %s holds %r", cls.__name__, cls.model_type, path, got)
        processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
        backbone = cls(model=model, processor=processor, family=got or cls.model_type, path=path)
        backbone.configure_processor(cfg)
        return backbone

    # -- the tiny offline twin ----------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def build_tiny(cls, out_dir: str | Path, seed: int, sizes: dict[str, int]) -> None:
        """Write a tiny random checkpoint of this family (model + processor) into the empty ``out_dir``,
        deterministically from ``seed`` and ``sizes`` (:attr:`tiny_sizes` with overrides applied)."""

    @classmethod
    def tiny_checkpoint(cls, cache_dir: str | Path, seed: int = 0, sizes: Mapping[str, int] | None = None) -> Path:
        """The cached tiny twin for (seed, sizes) under ``cache_dir``, built on first use."""
        merged = {**cls.tiny_sizes, **dict(sizes or {})}
        unknown = sorted(set(merged) - set(cls.tiny_sizes))
        if unknown:
            raise ValueError(f"backbone.sizes has unknown key(s) {unknown} for {cls.__name__}; "
                             f"known: {sorted(cls.tiny_sizes)}")
        name = f"tiny_{cls.model_type}-v{cls.tiny_version}-seed{seed}-" + "-".join(str(merged[k]) for k in sorted(merged))
        return ensure_checkpoint(Path(cache_dir).expanduser() / name, cls.build_tiny, seed, merged)

    @classmethod
    def load_tiny(cls, cfg) -> Backbone:
        """Build (once, cached under ``backbone.cache_dir``) and load the tiny twin.

        The whole config node reaches :meth:`load`, with ``path`` pointing at the cached twin, so every backbone
        key (dtype, pixel budget, quantisation, ...) applies to the twin exactly as to a real checkpoint.
        """
        merged = config_dict(cfg)
        merged["path"] = str(cls.tiny_checkpoint(merged.get("cache_dir") or "~/.cache/vau",
                                                 seed=int(merged.get("seed") or 0), sizes=merged.get("sizes")))
        merged["dtype"] = merged.get("dtype") or "float32"
        return cls.load(merged)


def build_backbone(cfg, lora=None) -> Backbone:
    """Load the backbone named by ``cfg.name``; then LoRA/QLoRA adapters and gradient checkpointing.

    Args:
        cfg: the ``backbone`` config node.
        lora: the root ``lora`` config node; adapters are added when ``lora.enabled`` is true.
    """
    backbone = BACKBONES.get(_get(cfg, "name"))(cfg)

    backbone.model = setup_training_memory(backbone.model, cfg, lora, quantized=bool(_get(cfg, "quantization")),
                                           vision_prefixes=backbone.vision_module_prefixes,
                                           lora_targets=(backbone.lora_targets, backbone.vision_lora_targets))
    return backbone
