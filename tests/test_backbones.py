"""The backbone interface, checked on every registered backbone (the registry is the test matrix).

Tiny twins (``tiny_*``) are built into the session's temporary cache and run for real: encoding of a decoded clip,
a forward, a generate, the token ids and module names they report, the vision-tensor slicing. Real-checkpoint
backbones are checked through their own config file and builder, loading their tiny twin in place of the weights.
"""

from __future__ import annotations

import pytest
import torch

from vau.backbones.adapters import LoraSettings, in_vision, resolve_targets
from vau.backbones.base import Backbone
from vau.config import compose
from vau.data.annotations import read_annotations
from vau.datamodules.encoding import Collator, SampleEncoder, model_inputs
from vau.datamodules.samplers import UniformSampler
from vau.datamodules.video import read_clip
from vau.modules.sft import SFTModule
from vau.registry import BACKBONES
from vau.tasks import get_task

TINY = [name for name in BACKBONES.names() if name.startswith("tiny_")]
REAL = [name for name in BACKBONES.names() if not name.startswith("tiny_")]


def backbone_cfg(name: str, *overrides: str):
    """The backbone node of ``conf/backbone/NAME.yaml`` as is (no experiment on top), with overrides."""
    return compose(None, ["~experiment", f"backbone={name}", *overrides]).backbone


@pytest.fixture(scope="module", params=TINY)
def twin(request, cache_dir) -> Backbone:
    return BACKBONES.get(request.param)(backbone_cfg(request.param, f"paths.cache_dir={cache_dir}"))


@pytest.fixture(scope="module")
def batch(twin, demo_root):
    """Two demo clips (different videos), encoded by the twin's own processor and collated."""
    encoder = SampleEncoder(twin, get_task("qa"))
    items = []
    for ann in read_annotations(demo_root / "train.csv")[:2]:
        sample = get_task("qa").sample(ann, str(demo_root / "videos" / ann.video))
        items.append(encoder(sample, read_clip(sample.video_path, UniformSampler(4))))
    return Collator(twin.pad_id)(items)


def test_registry_has_a_tiny_twin_of_every_real_backbone():
    assert TINY and REAL
    assert {f"tiny_{name}" for name in REAL} <= set(TINY)


def test_twin_is_a_real_checkpoint_of_its_family(twin, cache_dir):
    assert twin.family == twin.model_type == twin.model.config.model_type
    assert str(twin.path).startswith(str(cache_dir))
    hidden = (twin.model.config.text_config.hidden_size, twin.model.config.vision_config.hidden_size)
    assert all(size % 64 == 0 for size in hidden)  # bitsandbytes' CPU 4-bit kernels need it


def test_twin_encodes_a_clip_runs_forward_and_generates(twin, batch):
    model = twin.model.eval()
    with torch.no_grad():
        loss = model(**model_inputs(batch), labels=batch["labels"]).loss
    assert torch.isfinite(loss)
    module = SFTModule(twin, {"name": "adamw", "lr": 1e-3}, "qa")
    ids = module.generate_ids(model_inputs(batch, prompt_only=True), 6, do_sample=True, top_k=None)
    assert ids.shape[0] == 2 and 0 < ids.shape[1] <= 6
    assert not torch.isin(ids, torch.tensor(twin.suppressed_token_ids)).any()
    assert len(module.decode(ids)) == 2


def test_token_ids_are_real_special_tokens(twin, batch):
    tok = twin.processor.tokenizer
    special = set(tok.all_special_ids)
    assert twin.eos_token_ids and set(twin.eos_token_ids) <= special
    configured = twin.model.generation_config.eos_token_id
    assert set([configured] if isinstance(configured, int) else configured) <= set(twin.eos_token_ids)
    assert tok.eos_token_id in twin.eos_token_ids and twin.end_of_turn_id in twin.eos_token_ids
    assert len(set(twin.eos_token_ids)) == len(twin.eos_token_ids)
    # Every SFT target ends with the end-of-turn id.
    targets = batch["labels"][batch["labels"] != -100]
    assert (batch["labels"][:, -1] == twin.end_of_turn_id).all() and len(targets)
    # The prompt's vision placeholders (what the processor marks as multimodal) are all suppressed.
    assert twin.suppressed_token_ids and set(twin.suppressed_token_ids) <= special
    placeholders = batch["prompt_input_ids"][batch["prompt_mm_token_type_ids"] != 0].unique().tolist()
    assert placeholders and set(placeholders) <= set(twin.suppressed_token_ids)
    assert not set(twin.suppressed_token_ids) & set(twin.eos_token_ids)


def test_vision_prefixes_are_the_vision_tower(twin):
    assert twin.vision_module_prefixes
    for prefix in twin.vision_module_prefixes:
        assert sum(p.numel() for p in twin.model.get_submodule(prefix).parameters()) > 0
    defaults = (twin.lora_targets, twin.vision_lora_targets)  # the backbone's own target names
    lm_only = resolve_targets(twin.model, LoraSettings(enabled=True), twin.vision_module_prefixes, defaults)
    both = resolve_targets(twin.model, LoraSettings(enabled=True, vision=True), twin.vision_module_prefixes, defaults)
    assert lm_only and not any(in_vision(n, twin.vision_module_prefixes) for n in lm_only)
    assert set(lm_only) < set(both) and all(in_vision(n, twin.vision_module_prefixes) for n in set(both) - set(lm_only))


def _assert_same_inputs(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].shape == b[key].shape and torch.equal(a[key], b[key]), key


def test_repeat_vision_then_slice_vision_round_trips(twin, batch):
    inputs = model_inputs(batch, prompt_only=True)
    repeated = twin.repeat_vision(inputs, 3)
    assert repeated["input_ids"].shape[0] == 6
    for key in inputs:  # every tensor grows: text per example, vision per video
        assert repeated[key].shape[0] == 3 * inputs[key].shape[0], key
    _assert_same_inputs(twin.slice_vision(repeated, [0, 3]), inputs)
    for row in range(2):
        one = twin.slice_vision(inputs, [row])
        for copy in range(3):
            _assert_same_inputs(twin.slice_vision(repeated, [3 * row + copy]), one)
    # Examples keep their own video: reordered inputs give reordered logits.
    model = twin.model.eval()
    with torch.no_grad():
        logits = model(**inputs).logits
        swapped = model(**twin.slice_vision(inputs, [1, 0])).logits
    torch.testing.assert_close(swapped, logits.flip(0), atol=1e-5, rtol=1e-5)


def test_slice_vision_refuses_vision_tensors_that_do_not_match_the_prompts(twin, batch):
    inputs = model_inputs(batch, prompt_only=True)
    ids = inputs["input_ids"].clone()
    first_placeholder = (inputs["mm_token_type_ids"][0] != 0).nonzero()[0, 0]
    ids[0, first_placeholder] = twin.pad_id  # one vision token fewer than the video's patches need
    with pytest.raises(ValueError, match="does not match"):
        twin.slice_vision({**inputs, "input_ids": ids}, [0])


@pytest.mark.parametrize("name", TINY)
def test_an_empty_pixel_range_fails_naming_both_keys(name, cache_dir):
    build = BACKBONES.get(name)
    with pytest.raises(ValueError, match=r"backbone\.min_pixels=8192 > backbone\.max_pixels=4096"):
        build(backbone_cfg(name, f"paths.cache_dir={cache_dir}", "backbone.min_pixels=8192",
                           "backbone.max_pixels=4096"))
    # Only max_pixels set, below the checkpoint processor's own minimum: that default is named too.
    with pytest.raises(ValueError, match=r"backbone\.min_pixels=\d+ > backbone\.max_pixels=16 \(min_pixels from"):
        build(backbone_cfg(name, f"paths.cache_dir={cache_dir}", "backbone.min_pixels=null", "backbone.max_pixels=16"))


@pytest.mark.parametrize("name", REAL)
def test_real_backbone_without_path_names_the_key(name, tmp_path):
    build = BACKBONES.get(name)
    with pytest.raises(ValueError, match=r"backbone\.path is not set"):
        build(backbone_cfg(name))
    with pytest.raises(FileNotFoundError, match=r"backbone\.path=.*is not a directory"):
        build(backbone_cfg(name, f"backbone.path={tmp_path / 'absent'}"))
    with pytest.raises(FileNotFoundError, match=r"backbone\.path=.*holds no config\.json"):
        build(backbone_cfg(name, f"backbone.path={tmp_path}"))


@pytest.mark.parametrize("name", REAL)
def test_real_backbone_config_loads_its_twin_through_the_real_builder(name, cache_dir):
    # The real conf file and builder, unchanged, with the tiny twin's directory in place of the real weights.
    twin = BACKBONES.get(f"tiny_{name}")(backbone_cfg(f"tiny_{name}", f"paths.cache_dir={cache_dir}"))
    cfg = backbone_cfg(name, f"backbone.path={twin.path}")
    real = BACKBONES.get(name)(cfg)
    assert type(real) is type(twin) and real.family == name
    assert real.model.dtype == torch.bfloat16 == getattr(torch, cfg.dtype)
    size = real.processor.video_processor.size
    assert (size["shortest_edge"], size["longest_edge"]) == (cfg.min_pixels, cfg.max_pixels)


def test_qwen3_vl_with_the_demo_pixel_budget_fails_before_reading_weights(tmp_path):
    # The demo experiment sets max_pixels=3136; Qwen3-VL's min_pixels is 4096 (64 x 64 frames would be decoded).
    cfg = compose("demo", ["backbone=qwen3_vl", f"backbone.path={tmp_path / 'never-read'}"]).backbone
    with pytest.raises(ValueError, match=r"backbone\.min_pixels=4096 > backbone\.max_pixels=3136"):
        BACKBONES.get("qwen3_vl")(cfg)


def test_two_pass_self_correction_runs_on_every_twin(twin, batch):
    """The second pass continues each row's conversation (first reply, then the check-request turn) and the model
    generates from it; the joined reply holds both."""
    from vau.tasks.base import SECOND_PASS_PROMPT, split_passes

    module = SFTModule(twin, {"name": "adamw", "lr": 1e-3}, "qa", generation={"self_correct": True, "max_new_tokens": 5})
    prompt = model_inputs(batch, prompt_only=True)
    first = module.generate_ids(prompt, 5, do_sample=False)
    second = module.second_pass(prompt, first)
    tok = twin.processor.tokenizer
    for row in range(2):
        kept = second["input_ids"][row][second["attention_mask"][row].bool()]
        text = tok.decode(kept)
        assert text.endswith(tok.decode(twin.follow_up_ids(SECOND_PASS_PROMPT))) and SECOND_PASS_PROMPT in text
        if "mm_token_type_ids" in second:
            assert (second["mm_token_type_ids"][row][second["attention_mask"][row].bool()] != 0).sum() == \
                (prompt["mm_token_type_ids"][row] != 0).sum()
    replies = module.generate_replies(batch)
    assert len(replies) == 2 and all(split_passes(r) is not None for r in replies)
