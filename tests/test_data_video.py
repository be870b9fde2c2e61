"""Video reading (read_clip with the default pyav decoder), decode-time resize, the frame cache, bad input end to end."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from vau.backbones.qwen import frame_size_fn
from vau.callbacks import BadVideoError, BadVideoMonitor
from vau.cli import main
from vau.data.annotations import write_annotations
from vau.data.synthetic import KINDS, render_clip, write_broken_videos, write_mp4
from vau.datamodules.dataset import VideoResolver, VideoTaskDataset
from vau.datamodules.encoding import Collator, SampleEncoder
from vau.datamodules.samplers import build_sampler
from vau.datamodules.vau_bench import VAUBenchDataModule
from vau.datamodules.video import FrameCache, VideoError, read_clip
from vau.tasks import Sample, get_task

UNIFORM = build_sampler({"name": "uniform", "num_frames": 4})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from vau.backbones.base import BACKBONES

    cache = tmp_path_factory.getbasetemp() / "tiny-backbone"
    return BACKBONES.get("tiny_qwen2_5_vl")({"cache_dir": str(cache), "seed": 0})


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    good = {}
    for i, size in enumerate((64, 80, 96)):
        good[f"good{i}"] = folder / f"Good_{i}.mp4"  # capitalised: annotations name them in lower case
        write_mp4(good[f"good{i}"], render_clip(KINDS[1 + i], (1.0, 2.0), 8, 24 + 8 * i, size, rng), 8)
    wide = folder / "wide.mp4"
    write_mp4(wide, rng.integers(0, 255, size=(12, 120, 208, 3), dtype=np.uint8), 6)
    return {**good, "wide": wide, **write_broken_videos(folder / "broken")}


def test_only_the_sampled_frames_are_decoded_exactly(media) -> None:
    import decord

    clip = read_clip(media["good1"], build_sampler({"name": "random_segment", "num_frames": 6}),
                     np.random.default_rng(3))
    every = decord.VideoReader(str(media["good1"])).get_batch(list(range(clip.total_frames))).asnumpy()
    assert clip.frames.shape == (6, 80, 80, 3) and clip.frames.dtype == np.uint8
    assert np.array_equal(clip.frames, every[clip.indices])
    assert clip.fps == pytest.approx(8.0) and clip.total_frames == 32


@pytest.mark.parametrize("budget", [{}, {"min_pixels": 784, "max_pixels": 3136}])
def test_decode_time_resize_matches_the_processor(tiny, media, tmp_path_factory, budget) -> None:
    from vau.backbones.base import BACKBONES

    # With a budget from config, configure_processor also turns on the per-frame cap: both rules are covered.
    processor = BACKBONES.get("tiny_qwen2_5_vl")({"cache_dir": str(tmp_path_factory.getbasetemp() / "tiny-backbone"),
                                                  **budget}).processor if budget else tiny.processor
    size_fn = frame_size_fn(processor)
    raw = read_clip(media["wide"], UNIFORM)
    small = read_clip(media["wide"], UNIFORM, size_fn=size_fn)
    expected = size_fn(4, 120, 208)
    assert small.frames.shape == (4, *expected, 3) and expected[0] * expected[1] <= budget.get("max_pixels", 112 * 112)
    vp = processor.video_processor
    a = vp(videos=[raw.frames], video_metadata=[raw.metadata()], do_sample_frames=False, return_tensors="pt")
    b = vp(videos=[small.frames], video_metadata=[small.metadata()], do_sample_frames=False, return_tensors="pt")
    # Same grid, same tokens, same pixels: the processor resizes uint8 frames with the same kernel, and its own
    # resize of the pre-resized frames is then a no-op.
    assert a["video_grid_thw"].tolist() == b["video_grid_thw"].tolist()
    assert torch.equal(a["pixel_values_videos"], b["pixel_values_videos"])


@pytest.mark.parametrize("frames, height, width", [(4, 360, 640), (16, 720, 1280), (8, 240, 320)])
def test_decode_time_resize_matches_qwen3_vl_whole_clip_budget(frames: int, height: int, width: int) -> None:
    from transformers import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    from vau.datamodules.video import resize_frames

    vp = Qwen3VLVideoProcessor(size={"shortest_edge": 4096, "longest_edge": 16 * 32 * 32 * 8})
    raw = np.random.default_rng(0).integers(0, 255, size=(frames, height, width, 3), dtype=np.uint8)
    small = resize_frames(raw, *frame_size_fn(vp)(frames, height, width))
    meta = lambda f: VideoMetadata(total_num_frames=3 * frames, fps=30.0, width=f.shape[2], height=f.shape[1],  # noqa: E731
                                   frames_indices=list(range(0, 3 * frames, 3)))
    a = vp(videos=[raw], video_metadata=[meta(raw)], do_sample_frames=False, return_tensors="pt")
    b = vp(videos=[small], video_metadata=[meta(small)], do_sample_frames=False, return_tensors="pt")
    assert a["video_grid_thw"].tolist() == b["video_grid_thw"].tolist()
    assert torch.equal(a["pixel_values_videos"], b["pixel_values_videos"])


def test_frame_cache_hits_and_invalidation(media, tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(media["good0"].read_bytes())
    cache = FrameCache(tmp_path / "cache")
    first = read_clip(path, UNIFORM, cache=cache)
    second = read_clip(path, UNIFORM, cache=cache)
    assert (cache.hits, cache.misses) == (1, 1) and np.array_equal(first.frames, second.frames)
    assert np.array_equal(first.indices, second.indices) and second.fps == first.fps
    read_clip(path, build_sampler({"name": "uniform", "num_frames": 6}), cache=cache)  # other sampler config
    read_clip(path, UNIFORM, np.random.default_rng(0), cache=cache)  # a random draw is never cached
    assert (cache.hits, cache.misses) == (1, 2)
    read_clip(path, UNIFORM, cache=cache, decoder="decord")  # the other decoder's frames are its own entry
    assert (cache.hits, cache.misses) == (1, 3)
    read_clip(path, UNIFORM, cache=cache, decoder="decord")
    assert (cache.hits, cache.misses) == (2, 3)
    os.utime(path, ns=(0, 10**9))  # the file changed: its entry no longer matches
    read_clip(path, UNIFORM, cache=cache)
    assert cache.misses == 4
    for entry in (tmp_path / "cache").rglob("*.npz"):
        entry.write_bytes(b"garbage")
    again = read_clip(path, UNIFORM, cache=cache)
    assert np.array_equal(again.frames, first.frames) and cache.misses == 5


@pytest.mark.parametrize("kind, reason", [("missing", "missing"), ("empty", "unreadable"), ("text", "unreadable"),
                                          ("truncated", "unreadable"), ("no_frames", "no_frames")])
def test_unusable_videos_raise_a_named_video_error(media, kind: str, reason: str) -> None:
    with pytest.raises(VideoError) as info:
        read_clip(media[kind], UNIFORM)
    assert info.value.reason == reason and str(media[kind]) in str(info.value)


def _samples(media, names: list[str]) -> list[Sample]:
    return [Sample(task="qa", video=Path(media[n]).name, video_path=str(media[n]), question="What happens?",
                   options=("a", "b", "c", "d"), answer="B", row=i + 2) for i, n in enumerate(names)]


def test_bad_videos_are_skipped_counted_and_fail_past_the_fraction(tiny, media, caplog) -> None:
    names = ["good0", "truncated", "good1", "empty", "text", "good2", "no_frames", "missing"]
    dataset = VideoTaskDataset(_samples(media, names), SampleEncoder(tiny, get_task("qa")), UNIFORM,
                               train=False)
    loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=Collator(tiny.pad_id))
    batches = list(loader)
    assert [b["size"] for b in batches] == [2, 1, 0]
    assert [s.video for b in batches for s in b["samples"]] == ["Good_0.mp4", "Good_1.mp4", "Good_2.mp4"]
    bad = [item for b in batches for item in b["bad"]]
    assert [Path(i["video"]).name for i in bad] == [Path(media[n]).name for n in names if not n.startswith("good")]
    assert {i["reason"] for i in bad} == {"unreadable", "no_frames", "missing"} and all(i["row"] for i in bad)
    assert "input_ids" not in batches[2] and not batches[2]["samples"]  # an all-bad batch has no tensors

    monitor = BadVideoMonitor(max_bad_fraction=0.9, min_seen=1)
    with caplog.at_level(logging.WARNING, logger="vau.callbacks"):
        for _ in range(2):  # two epochs: one warning per file, every skip counted
            for batch in batches:
                monitor.observe(batch)
    assert (monitor.seen, monitor.skipped) == (16, 10)
    warnings = [r.getMessage() for r in caplog.records if "skipping unusable video" in r.getMessage()]
    assert len(warnings) == 5 and all(any(Path(media[n]).name in w for w in warnings)
                                      for n in names if not n.startswith("good"))
    strict = BadVideoMonitor(max_bad_fraction=0.01, min_seen=1)
    with pytest.raises(BadVideoError, match=r"data.max_bad_fraction=0.01"):
        for batch in batches:
            strict.observe(batch)


class _Probe(L.LightningModule):
    """The smallest trainable module: it records what the loader delivered."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.sizes: list[int] = []
        self.rows: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        self.sizes.append(batch["size"])
        self.rows.setdefault(self.current_epoch, []).extend(s.row for s in batch["samples"])
        return (self.weight - 1).pow(2).sum() if batch["size"] else None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _datamodule(tiny, media, tmp_path: Path, n_good: int, broken: list[str]) -> VAUBenchDataModule:
    rows = [{"Video Name": Path(media[f"good{i % 3}"]).name.lower(), "Question": "What happens?", "Option 1": "a",
             "Option 2": "b", "Option 3": "c", "Option 4": "d", "Correct Option": "A", "Key Object": "x",
             "Description": "d", "Reasoning": "r", "Anomaly Class": "Fire", "Start Time": "1.0", "End Time": "2.0"}
            for i in range(n_good)]
    rows += [{**rows[0], "Video Name": f"../broken/{Path(media[k]).name}"} for k in broken]
    write_annotations(tmp_path / "train.csv", rows)
    cfg = OmegaConf.create({"task": "qa", "annotations": {"train": str(tmp_path / "train.csv")},
                            "video_root": str(media["good0"].parent), "batch_size": 4, "num_workers": 2,
                            "max_bad_fraction": 0.01})
    return VAUBenchDataModule(cfg, {"name": "random_segment", "num_frames": 4}, tiny, tiny.pad_id, seed=1)


def test_training_run_skips_bad_videos_and_stops_past_max_bad_fraction(tiny, media, tmp_path: Path) -> None:
    broken = ["truncated", "empty", "text"]
    trainer = lambda fraction: L.Trainer(  # noqa: E731
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[BadVideoMonitor(fraction)])
    with pytest.raises(BadVideoError, match=r"[1-3] of 2[0-4] videos were unusable .* data.max_bad_fraction=0.01"):
        trainer(0.01).fit(_Probe(), datamodule=_datamodule(tiny, media, tmp_path, 21, broken))
    module, run = _Probe(), trainer(0.2)
    run.fit(module, datamodule=_datamodule(tiny, media, tmp_path, 21, broken))
    monitor = run.callbacks[0] if isinstance(run.callbacks[0], BadVideoMonitor) else next(
        c for c in run.callbacks if isinstance(c, BadVideoMonitor))
    assert (monitor.seen, monitor.skipped) == (48, 6) and sum(module.sizes) == 42 and len(module.sizes) == 12
    # Each epoch is a new, seeded order of the same 21 usable rows.
    assert sorted(module.rows[0]) == sorted(module.rows[1]) and module.rows[0] != module.rows[1]


def test_resolver_finds_names_case_insensitively_and_without_prefix(media) -> None:
    folder = media["good0"].parent
    resolver = VideoResolver(None, {"ucf": str(folder)})
    assert resolver("good_0.mp4", "ucf") == folder / "Good_0.mp4"
    assert resolver("ucf_GOOD_1.mp4", "ucf") == folder / "Good_1.mp4"
    assert resolver("nope.mp4", "ucf") == folder / "nope.mp4"


def test_data_check_lists_unusable_videos(media, tmp_path: Path, capsys) -> None:
    names = ["good0", "good1", "truncated", "empty", "text", "no_frames", "missing"]
    rows = [{"Video Name": f"msad_{Path(media[n]).name}", "Question": "-1", "Option 1": "-1", "Option 2": "-1",
             "Option 3": "-1", "Option 4": "-1", "Correct Option": "-1", "Key Object": "-1", "Description": "d",
             "Reasoning": "r", "Anomaly Class": "Normal", "Start Time": "0.0", "End Time": "0.0"} for n in names]
    write_annotations(tmp_path / "val.csv", rows)
    roots = [f"video_roots.msad={media['good0'].parent}", f"video_root={media['truncated'].parent}"]
    assert main(["data", "check", f"annotations={tmp_path / 'val.csv'}", *roots]) == 1
    out = capsys.readouterr().out
    assert "checked 7 videos: 2 usable" in out
    assert "missing (1):" in out and "unreadable (3):" in out and "no_frames (1):" in out
    assert "msad_broken_truncated.mp4 -> " in out
    write_annotations(tmp_path / "val.csv", rows[:2])
    assert main(["data", "check", f"annotations={tmp_path / 'val.csv'}", *roots]) == 0


def test_data_decoder_key_reaches_the_dataset_and_both_decoders_give_the_same_inputs(tiny, media) -> None:
    samples = _samples(media, ["good0", "good1", "good2"])
    encoder = SampleEncoder(tiny, get_task("qa"))
    items = {decoder: [VideoTaskDataset(samples, encoder, UNIFORM, train=False, decoder=decoder)[i] for i in range(3)]
             for decoder in ("pyav", "decord")}
    for a, b in zip(items["pyav"], items["decord"]):
        assert "bad" not in a and torch.equal(torch.as_tensor(a["vision"]["pixel_values_videos"]),
                                              torch.as_tensor(b["vision"]["pixel_values_videos"]))


def test_datamodule_refuses_an_unknown_decoder_before_reading_anything(tiny) -> None:
    cfg = OmegaConf.create({"task": "qa", "annotations": {}, "decoder": "opencv"})
    with pytest.raises(ValueError, match=r"data.decoder='opencv' is not a decoder; choose one of pyav, decord"):
        VAUBenchDataModule(cfg, {"name": "uniform", "num_frames": 4}, tiny, tiny.pad_id)
