"""Frame samplers (every registered one), the training order, and timestamps reaching the model's positions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

import vau.datamodules.samplers  # noqa: F401  (registers the built-in samplers)
from vau.data.synthetic import KINDS, render_clip, write_mp4
from vau.datamodules.dataset import VideoTaskDataset
from vau.datamodules.encoding import Collator, SampleEncoder
from vau.datamodules.loading import EpochSampler
from vau.datamodules.samplers import FpsSampler, build_sampler
from vau.datamodules.video import read_clip
from vau.registry import SAMPLERS
from vau.tasks import Sample, get_task

BUILTIN = ("uniform", "fps", "random_segment")
videos = st.tuples(st.integers(1, 20_000), st.floats(0.5, 120.0, allow_nan=False))


@pytest.mark.parametrize("name", SAMPLERS.names())
@settings(max_examples=120, deadline=None)
@given(video=videos, num_frames=st.integers(1, 96), seed=st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_every_sampler_picks_sorted_in_range_frames_at_true_seconds(name, video, num_frames, seed) -> None:
    total, fps = video
    cls = SAMPLERS.get(name)
    sampler = cls(num_frames=num_frames) if name in ("uniform", "random_segment") else cls()
    sel = sampler(total, fps, None if seed is None else np.random.default_rng(seed))
    assert sel.indices.dtype == np.int64 and len(sel.indices) >= 1
    assert np.all(np.diff(sel.indices) >= 0), "indices must be sorted"
    assert sel.indices.min() >= 0 and sel.indices.max() < total
    np.testing.assert_allclose(sel.timestamps, sel.indices / fps)
    assert np.all(sel.timestamps < total / fps)
    if name in ("uniform", "random_segment"):
        assert len(sel.indices) == num_frames
        if total >= num_frames:  # one frame inside each of the equal segments
            lo = np.floor(np.arange(num_frames) * total / num_frames)
            hi = np.ceil((np.arange(num_frames) + 1) * total / num_frames)
            assert np.all(sel.indices >= lo) and np.all(sel.indices < hi)
    if name == "fps":
        assert len(sel.indices) == sampler.count(total, fps) and len(sel.indices) % sampler.frame_factor == 0


@settings(max_examples=120, deadline=None)
@given(video=videos, target=st.floats(0.1, 8.0), lo=st.integers(1, 16), extra=st.integers(0, 200),
       factor=st.integers(1, 4))
def test_fps_sampler_count_follows_duration(video, target, lo, extra, factor) -> None:
    total, fps = video
    sampler = FpsSampler(fps=target, min_frames=lo, max_frames=lo + extra, frame_factor=factor)
    n = sampler.count(total, fps)
    assert n % factor == 0
    assert -(-lo // factor) * factor <= n <= max((lo + extra) // factor * factor, -(-lo // factor) * factor)
    wanted = total / fps * target
    if -(-lo // factor) * factor + factor <= wanted <= (lo + extra) // factor * factor - factor:
        assert abs(n - wanted) <= factor  # inside the clamp, the count is the duration x target rate


def test_random_segment_is_uniform_without_rng_and_seeded_with_it() -> None:
    rs, uni = SAMPLERS.get("random_segment")(num_frames=8), SAMPLERS.get("uniform")(num_frames=8)
    assert rs(300, 30.0).indices.tolist() == uni(300, 30.0).indices.tolist()
    draw = lambda seed: rs(300, 30.0, np.random.default_rng(seed)).indices.tolist()  # noqa: E731
    assert draw([0, 1, 5]) == draw([0, 1, 5]) and draw([0, 1, 5]) != draw([0, 2, 5])


def test_build_sampler_errors_name_the_key() -> None:
    assert build_sampler({"name": "uniform", "num_frames": 4}).num_frames == 4
    with pytest.raises(KeyError, match="Known samplers: .*random_segment"):
        build_sampler({"name": "unifrom"})
    with pytest.raises(ValueError, match="sampler.num_frames must be >= 1"):
        build_sampler({"name": "uniform", "num_frames": 0})


def test_epoch_sampler_is_deterministic_per_seed_and_epoch() -> None:
    groups = ["qa"] * 10 + ["tag"] * 4 + ["cls"] * 6
    order = lambda seed, epoch, **kw: (s := EpochSampler(groups, seed=seed, **kw), s.set_epoch(epoch), list(s))[2]  # noqa: E731
    assert order(0, 0) == order(0, 0) and order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert sorted(i for _, i in order(0, 3)) == list(range(20)) and {e for e, _ in order(0, 3)} == {3}
    assert [i for _, i in order(0, 0, shuffle=False)] == list(range(20))
    weights = {"qa": 1.0, "tag": 2.0, "cls": 1.0}
    mixed = order(0, 2, weights=weights, num_samples=40)
    counts = {t: sum(groups[i] == t for _, i in mixed) for t in weights}
    assert counts == {"qa": 10, "tag": 20, "cls": 10} and len(EpochSampler(groups, weights, 40)) == 40
    tag_draws = [i for _, i in mixed if groups[i] == "tag"]
    assert all(tag_draws.count(i) == 5 for i in range(10, 14)), "oversampled tasks cycle through all samples"
    with pytest.raises(ValueError, match="no task with samples has a positive weight"):
        EpochSampler(groups, {"describe": 1.0})


# -- real videos through the real processor -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from vau.backbones.base import BACKBONES

    cache = tmp_path_factory.getbasetemp() / "tiny-backbone"
    return BACKBONES.get("tiny_qwen2_5_vl")({"cache_dir": str(cache), "seed": 0})


def _video(folder: Path, name: str, n_frames: int, fps: int, seed: int = 0) -> Path:
    path = folder / name
    write_mp4(path, render_clip(KINDS[1], (1.0, 3.0), fps, n_frames, 64, np.random.default_rng(seed)), fps)
    return path


def _sample(path: Path, task: str = "qa") -> Sample:
    return Sample(task=task, video=path.name, video_path=str(path), question="What happens?",
                  options=("a", "b", "c", "d"), answer="A", interval=(1.0, 3.0), anomaly_class="Fire")


@pytest.mark.parametrize("sampler_cfg, frames", [({"name": "uniform", "num_frames": 8}, 8),
                                                ({"name": "fps", "fps": 2.0, "max_frames": 64}, 12)])
def test_timestamps_reach_the_model_temporal_positions(tiny, tmp_path: Path, sampler_cfg, frames) -> None:
    fps, n_frames = 10, 60  # a 6-second clip
    path = _video(tmp_path, "clip.mp4", n_frames, fps)
    clip = read_clip(path, build_sampler(sampler_cfg))
    assert clip.fps == pytest.approx(fps) and clip.total_frames == n_frames and len(clip.indices) == frames
    meta = tiny.processor.video_processor(videos=[clip.frames], video_metadata=[clip.metadata()],
                                          do_sample_frames=False, return_metadata=True)["video_metadata"][0]
    assert meta.frames_indices == clip.indices.tolist() and meta.fps == pytest.approx(fps)
    np.testing.assert_allclose(meta.timestamps, clip.timestamps)
    item = SampleEncoder(tiny, get_task("qa"))(_sample(path), clip)
    seconds_per_grid = float(item["vision"]["second_per_grid_ts"][0])
    # Two frames per temporal patch: a grid spans 2 sampled frames = 2 / (sampled frames per second).
    assert seconds_per_grid == pytest.approx(2 * (n_frames / fps) / frames)
    grid_start = clip.timestamps[::2] - clip.timestamps[0]
    np.testing.assert_allclose(np.arange(len(grid_start)) * seconds_per_grid, grid_start, atol=0.5 / fps)
    batch = Collator(tiny.pad_id)([item])
    positions, _ = tiny.model.model.get_rope_index(
        batch["input_ids"], batch["mm_token_type_ids"], video_grid_thw=batch["vision"]["video_grid_thw"],
        second_per_grid_ts=batch["vision"]["second_per_grid_ts"], attention_mask=batch["attention_mask"])
    temporal = positions[0, 0][batch["mm_token_type_ids"][0] == 2]
    steps = torch.unique(temporal) - temporal.min()
    per_second = tiny.model.config.vision_config.tokens_per_second
    # The model's temporal positions advance by tokens_per_second per real second of video.
    assert steps.tolist() == [int(k * seconds_per_grid * per_second) for k in range(len(grid_start))]


def _epoch_pixels(dataset, workers: int, seed: int, epoch: int) -> list[torch.Tensor]:
    sampler = EpochSampler([s.task for s in dataset.samples], seed=seed)
    sampler.set_epoch(epoch)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=workers,
                        collate_fn=Collator(0), persistent_workers=False)
    out = []
    for batch in loader:
        assert not batch["bad"]
        sizes = (batch["vision"]["video_grid_thw"].prod(-1)).tolist()
        pixels = torch.split(batch["vision"]["pixel_values_videos"], sizes)
        out += [(s.video, p) for s, p in zip(batch["samples"], pixels)]
    return out


def test_training_draws_depend_on_seed_and_epoch_not_on_workers(tiny, tmp_path: Path) -> None:
    samples = [_sample(_video(tmp_path, f"v{i}.mp4", 40 + 8 * i, 8, seed=i)) for i in range(5)]
    dataset = VideoTaskDataset(samples, SampleEncoder(tiny, get_task("qa")),
                               build_sampler({"name": "random_segment", "num_frames": 4}), train=True, seed=7)
    base = _epoch_pixels(dataset, 0, 7, 0)
    assert len(base) == 5 and len({v for v, _ in base}) == 5
    with_workers = _epoch_pixels(dataset, 2, 7, 0)
    assert [v for v, _ in with_workers] == [v for v, _ in base]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(base, with_workers))
    next_epoch = dict(_epoch_pixels(dataset, 2, 7, 1))
    assert any(not torch.equal(p, next_epoch[v]) for v, p in base), "a new epoch draws new frame positions"
    other_seed = _epoch_pixels(dataset, 0, 8, 0)
    assert [v for v, _ in other_seed] != [v for v, _ in base]
