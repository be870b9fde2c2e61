"""Tiny, random, real Qwen-VL checkpoints built offline: the twins behind ``tiny_qwen2_vl``, ``tiny_qwen2_5_vl``
and ``tiny_qwen3_vl`` (tests, the demo run, CPU benchmarks).

Each is the real ``*ForConditionalGeneration`` class with the real processor classes, whose byte-level BPE
tokenizer is trained in-process on vau's task vocabulary. :mod:`vau.backbones.tiny` caches them; they are then
loaded through the same ``from_pretrained`` path as a downloaded checkpoint.

The Qwen2.5-VL twin is frozen: the same corpus, sizes and seed must give bit-identical weights, because
documented learning curves were measured on it. Change it only together with ``TINY_VERSION``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vau.tasks import tokenizer_corpus

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|video_pad|>", "<|image_pad|>",
)
# The newer twins also carry <|vision_pad|>, as real Qwen-VL tokenizers do (the Qwen2.5-VL twin is frozen without).
SPECIAL_TOKENS_WITH_VISION_PAD = (*SPECIAL_TOKENS, "<|vision_pad|>")

# ChatML, as Qwen-VL checkpoints use it: content is a string or a list of {"type": "text"|"video"|"image"}.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Sizes are multiples of 64: bitsandbytes' CPU 4-bit kernels crash on smaller in_features.
TINY_VERSION = 2  # bump when the tokenizer corpus or architecture changes: invalidates cached checkpoints

DEFAULT_SIZES = {
    "vocab_size": 1024,
    "text_hidden": 128,
    "text_layers": 2,
    "text_heads": 4,
    "text_kv_heads": 2,
    "text_intermediate": 256,
    "vision_hidden": 64,
    "vision_depth": 2,
    "vision_heads": 2,
    "vision_intermediate": 128,
}


def _corpus() -> list[str]:
    # Words the tasks use, so that prompts and answers are a few tokens each, not bytes.
    return tokenizer_corpus()


def train_tokenizer(vocab_size: int, special_tokens: tuple[str, ...] = SPECIAL_TOKENS):
    """Train a byte-level BPE with Qwen2's pre-tokenizer on vau's task vocabulary; returns a Qwen2Tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=state["vocab"], merges=merges, unk_token=None, bos_token=None,
        eos_token="<|im_end|>", pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(special_tokens[1:])})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _mrope_25(head_dim: int) -> list[int]:
    half = head_dim // 2
    return [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]  # temporal, height, width; sums to half


def _token_ids(tokenizer) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def _text_config(s: dict, tokenizer, ids: dict[str, int], mrope: list[int], **extra) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": s["text_hidden"],
        "intermediate_size": s["text_intermediate"],
        "num_hidden_layers": s["text_layers"],
        "num_attention_heads": s["text_heads"],
        "num_key_value_heads": s["text_kv_heads"],
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        "pad_token_id": ids["<|endoftext|>"],
        **extra,
    }


def _vision_tokens(ids: dict[str, int]) -> dict[str, int]:
    return {"image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
            "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"]}


def _instruct_generation_config(model, ids: dict[str, int]) -> None:
    # As in the released Instruct checkpoints: a reply ends at <|im_end|> or <|endoftext|>.
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = None


def _save_twin(out_dir: str | Path, model, processor_cls, tokenizer, image_processor, video_processor) -> None:
    """Write a twin's model and its processor (the family's processor class, the twins' chat template)."""
    processor = processor_cls(image_processor=image_processor, video_processor=video_processor, tokenizer=tokenizer,
                              chat_template=CHAT_TEMPLATE)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def build_qwen2_5_vl(out_dir: str | Path, seed: int, s: dict) -> None:
    """Write a tiny random Qwen2.5-VL model + processor to ``out_dir`` (deterministic from ``seed``)."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = train_tokenizer(s["vocab_size"])
    ids = _token_ids(tokenizer)
    config = Qwen2_5_VLConfig(
        text_config=_text_config(s, tokenizer, ids, _mrope_25(s["text_hidden"] // s["text_heads"]),
                                 bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"]),
        vision_config={
            "depth": s["vision_depth"],
            "hidden_size": s["vision_hidden"],
            "intermediate_size": s["vision_intermediate"],
            "num_heads": s["vision_heads"],
            "out_hidden_size": s["text_hidden"],
            "fullatt_block_indexes": [s["vision_depth"] - 1],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
        },
        **_vision_tokens(ids),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    # Frozen: a single eos id (unlike the released checkpoints), as when the documented curves were measured.
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = None
    pixels = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    _save_twin(out_dir, model, Qwen2_5_VLProcessor, tokenizer, Qwen2VLImageProcessor(size=pixels),
               Qwen2VLVideoProcessor(size=pixels, do_sample_frames=False))


def build_qwen2_vl(out_dir: str | Path, seed: int, s: dict) -> None:
    """Write a tiny random Qwen2-VL model + processor to ``out_dir`` (deterministic from ``seed``)."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = train_tokenizer(s["vocab_size"], SPECIAL_TOKENS_WITH_VISION_PAD)
    ids = _token_ids(tokenizer)
    config = Qwen2VLConfig(
        text_config=_text_config(s, tokenizer, ids, _mrope_25(s["text_hidden"] // s["text_heads"]),
                                 bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"]),
        vision_config={
            "depth": s["vision_depth"],
            "embed_dim": s["vision_hidden"],
            "hidden_size": s["text_hidden"],  # Qwen2-VL's merger projects to the language model's width
            "mlp_ratio": s["vision_intermediate"] // s["vision_hidden"],
            "num_heads": s["vision_heads"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        **_vision_tokens(ids),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    _instruct_generation_config(model, ids)
    pixels = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    _save_twin(out_dir, model, Qwen2VLProcessor, tokenizer, Qwen2VLImageProcessor(size=pixels),
               Qwen2VLVideoProcessor(size=pixels, do_sample_frames=False))


def build_qwen3_vl(out_dir: str | Path, seed: int, s: dict) -> None:
    """Write a tiny random Qwen3-VL (dense) model + processor to ``out_dir`` (deterministic from ``seed``).

    Qwen3-VL differs from Qwen2.5-VL where it matters here: 16-pixel patches (32-pixel merged tokens), interleaved
    multimodal RoPE, DeepStack (vision features injected into the first decoder layers) and timestamp text
    between the frames of a video.
    """
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    tokenizer = train_tokenizer(s["vocab_size"], SPECIAL_TOKENS_WITH_VISION_PAD)
    ids = _token_ids(tokenizer)
    head_dim = s["text_hidden"] // s["text_heads"]
    half = head_dim // 2
    spatial = half * 5 // 16  # the released [24, 20, 20] split of 64 frequencies, scaled
    text = _text_config(s, tokenizer, ids, [half - 2 * spatial, spatial, spatial], head_dim=head_dim)
    text["rope_parameters"]["mrope_interleaved"] = True
    config = Qwen3VLConfig(
        text_config=text,
        vision_config={
            "depth": s["vision_depth"],
            "hidden_size": s["vision_hidden"],
            "intermediate_size": s["vision_intermediate"],
            "num_heads": s["vision_heads"],
            "out_hidden_size": s["text_hidden"],
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 256,  # a 16 x 16 grid, interpolated to each frame's patch grid
            "deepstack_visual_indexes": [0],
        },
        **_vision_tokens(ids),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    _instruct_generation_config(model, ids)
    pixels = {"shortest_edge": 32 * 32, "longest_edge": 128 * 128}
    _save_twin(out_dir, model, Qwen3VLProcessor, tokenizer, Qwen2VLImageProcessor(size=pixels, patch_size=16),
               Qwen3VLVideoProcessor(size=pixels, patch_size=16, do_sample_frames=False))
