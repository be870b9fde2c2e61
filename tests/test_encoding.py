"""Prompt/target encoding and batching with the tiny model's real processor."""

import torch

from vau.data.annotations import read_annotations
from vau.datamodules.encoding import IGNORE_INDEX, Collator, SampleEncoder, model_inputs
from vau.datamodules.samplers import UniformSampler
from vau.datamodules.video import read_clip
from vau.tasks import get_task


def test_labels_mask_prompt_and_padding_hand_checked():
    # Two items with hand-written ids: prompt [5, 6, 7] + target [8, 9], and prompt [5] + target [3].
    items = [
        {"sample": None, "prompt_ids": torch.tensor([5, 6, 7]), "target_ids": torch.tensor([8, 9]),
         "aligned": {"mm_token_type_ids": torch.tensor([0, 2, 0])}, "vision": {"pixel_values_videos": torch.ones(2, 3)}},
        {"sample": None, "prompt_ids": torch.tensor([5]), "target_ids": torch.tensor([3]),
         "aligned": {"mm_token_type_ids": torch.tensor([0])}, "vision": {"pixel_values_videos": torch.zeros(1, 3)}},
    ]
    batch = Collator(pad_id=0)(items)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [0, 0, 0, 5, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 8, 9], [-100, -100, -100, -100, 3]]
    assert batch["mm_token_type_ids"].tolist() == [[0, 2, 0, 0, 0], [0, 0, 0, 0, 0]]
    assert batch["prompt_input_ids"].tolist() == [[5, 6, 7], [0, 0, 5]]
    assert batch["prompt_attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["vision"]["pixel_values_videos"].shape == (3, 3)


def _encoded(tiny_backbone, demo_root, n=2):
    anns = read_annotations(demo_root / "train.csv")[:n]
    spec = get_task("qa")
    encoder = SampleEncoder(tiny_backbone, spec)
    items = []
    for ann in anns:
        sample = spec.sample(ann, str(demo_root / "videos" / ann.video))
        items.append(encoder(sample, read_clip(sample.video_path, UniformSampler(4))))
    return items, encoder


def test_real_labels_are_exactly_the_target_and_eos(tiny_backbone, demo_root):
    items, encoder = _encoded(tiny_backbone, demo_root)
    batch = Collator(tiny_backbone.pad_id)(items)
    tok = tiny_backbone.processor.tokenizer
    for row, item in enumerate(items):
        kept = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        assert tok.decode(kept) == encoder.spec.target(item["sample"]) + "<|im_end|>"
        # Every video placeholder and every prompt token is masked.
        video_id = tok.convert_tokens_to_ids("<|video_pad|>")
        assert (batch["labels"][row][batch["input_ids"][row] == video_id] == IGNORE_INDEX).all()


def test_left_padded_batch_matches_each_example_alone(tiny_backbone, demo_root):
    # Different lengths force padding; logits on real target positions must not change.
    items, _ = _encoded(tiny_backbone, demo_root)
    items[1]["target_ids"] = items[1]["target_ids"][:-4]
    collate = Collator(tiny_backbone.pad_id)
    model = tiny_backbone.model.eval()
    with torch.no_grad():
        joint = model(**model_inputs(collate(items))).logits
        for row, item in enumerate(items):
            alone = model(**model_inputs(collate([item]))).logits[0]
            width = alone.shape[0]
            torch.testing.assert_close(joint[row, -width:], alone, atol=1e-4, rtol=1e-4)


def test_processor_receives_true_timestamps(tiny_backbone, demo_root):
    ann = read_annotations(demo_root / "train.csv")[0]
    clip = read_clip(demo_root / "videos" / ann.video, UniformSampler(4))
    enc = SampleEncoder(tiny_backbone, get_task("qa"))(get_task("qa").sample(ann), clip)
    # Qwen2.5-VL places temporal patches second_per_grid_ts apart: 2 frames / sampled fps.
    sampled_fps = len(clip.indices) / clip.total_frames * clip.fps
    assert enc["vision"]["second_per_grid_ts"][0].item() == torch.tensor(2 / sampled_fps).item()


def test_total_pixels_bounds_the_whole_clip(cache_dir, tiny_path, demo_root):
    from vau.registry import BACKBONES

    ann = read_annotations(demo_root / "train.csv")[0]
    clip = read_clip(demo_root / "videos" / ann.video, UniformSampler(8))
    grids = {}
    for total in (None, 25088):  # 25088 = two 112x112 frames' worth for an 8-frame clip
        backbone = BACKBONES.get("tiny_qwen2_5_vl")({"cache_dir": str(cache_dir), "max_pixels": 12544,
                                                     "total_pixels": total})
        enc = SampleEncoder(backbone, get_task("qa"))(get_task("qa").sample(ann), clip)
        grids[total] = enc["vision"]["video_grid_thw"][0].tolist()
    assert grids[None] == [4, 8, 8]  # 112 x 112 frames: 8 x 8 patches
    assert grids[25088] == [4, 4, 4]  # per-frame share of the budget: 56 x 56
