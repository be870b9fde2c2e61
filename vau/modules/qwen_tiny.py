"""A tiny, random, real Qwen2.5-VL checkpoint built offline (tests, the demo run, CPU benchmarks).

The checkpoint is a real ``Qwen2_5_VLForConditionalGeneration`` with a real ``Qwen2_5_VLProcessor``
whose byte-level BPE tokenizer is trained in-process. It is written once to a directory and then loaded
through the same ``from_pretrained`` path as a downloaded checkpoint, so tests exercise the real loading code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|video_pad|>", "<|image_pad|>",
)

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
    from vau.tasks import tokenizer_corpus

    return tokenizer_corpus()


def train_tokenizer(vocab_size: int):
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
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
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
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_checkpoint(out_dir: str | Path, seed: int = 0, sizes: dict | None = None) -> Path:
    """Write a tiny random Qwen2.5-VL model + processor to ``out_dir`` (deterministic from ``seed``)."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    s = {**DEFAULT_SIZES, **(sizes or {})}
    tokenizer = train_tokenizer(s["vocab_size"])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = s["text_hidden"] // s["text_heads"]
    half = head_dim // 2
    mrope = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]  # temporal, height, width; sums to half
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": s["text_hidden"],
            "intermediate_size": s["text_intermediate"],
            "num_hidden_layers": s["text_layers"],
            "num_attention_heads": s["text_heads"],
            "num_key_value_heads": s["text_kv_heads"],
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
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
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = None
    pixels = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=pixels),
        video_processor=Qwen2VLVideoProcessor(size=pixels, do_sample_frames=False),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Write to a sibling temp dir and rename: a concurrent or killed build never leaves a half checkpoint.
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "vau_tiny.json").write_text(json.dumps({"seed": seed, "sizes": s}, indent=2))
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not (out_dir / "vau_tiny.json").is_file():  # lost a race to another process: theirs is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def ensure_tiny_checkpoint(cache_dir: str | Path, seed: int = 0, sizes: dict | None = None) -> Path:
    """The cached tiny checkpoint for (seed, sizes), built on first use."""
    s = {**DEFAULT_SIZES, **(sizes or {})}
    tag = f"v{TINY_VERSION}-seed{seed}-" + "-".join(str(s[k]) for k in sorted(s))
    path = Path(cache_dir).expanduser() / f"tiny_qwen2_5_vl-{tag}"
    if not (path / "vau_tiny.json").is_file():
        build_tiny_checkpoint(path, seed=seed, sizes=s)
    return path
