"""Map-style dataset over task samples: decode the sampled frames, encode with the backbone's processor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from vau.datamodules.encoding import SampleEncoder
from vau.datamodules.video import VideoError, read_clip
from vau.tasks import Sample


class VideoResolver:
    """Finds a video file from its annotation name: per-source roots, then a default root, case-insensitively.

    Args:
        video_root: default folder of the videos.
        source_roots: optional per-source folders (``{"msad": ..., "ucf": ..., "ecva": ...}``).
    """

    def __init__(self, video_root: str | Path | None, source_roots: dict[str, str] | None = None) -> None:
        self.roots: dict[str, Path] = {k: Path(v) for k, v in (source_roots or {}).items() if v}
        self.default = Path(video_root) if video_root else None
        self._listings: dict[Path, dict[str, str]] = {}

    def _lower_listing(self, root: Path) -> dict[str, str]:
        if root not in self._listings:
            self._listings[root] = {p.name.lower(): p.name for p in root.iterdir()} if root.is_dir() else {}
        return self._listings[root]

    def __call__(self, name: str, source: str = "") -> Path:
        roots = [r for r in (self.roots.get(source), self.default) if r is not None]
        for root in roots:
            exact = root / name
            if exact.is_file():
                return exact
            stripped = name.split("_", 1)[1] if source and name.lower().startswith(source + "_") else None
            for candidate in filter(None, (name, stripped)):
                found = self._lower_listing(root).get(candidate.lower())
                if found:
                    return root / found
        # Not found: return the expected path; reading it yields a counted, named skip.
        return (roots[0] if roots else Path(".")) / name


class VideoTaskDataset(Dataset):
    """Samples of one task; ``__getitem__`` returns the encoded example, or ``{"bad": ...}`` for an unusable video.

    Args:
        samples: the task samples, with ``video_path`` set.
        encoder: a :class:`SampleEncoder` for the backbone's processor and the task.
        sampler: a frame sampler from :data:`vau.registry.SAMPLERS`.
        train: random samplers draw from a generator keyed by (seed, epoch, index) in training, and pick
            deterministic positions in evaluation.
        with_target: append the target text (SFT); GRPO only needs the prompt.
    """

    def __init__(self, samples: list[Sample], encoder: SampleEncoder, sampler, train: bool, seed: int = 0,
                 with_target: bool = True) -> None:
        self.samples = samples
        self.encoder = encoder
        self.sampler = sampler
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.with_target = with_target

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.train else None
        try:
            clip = read_clip(sample.video_path, self.sampler, rng)
        except VideoError as err:
            return {"bad": {"video": sample.video_path, "error": str(err)}}
        return self.encoder(sample, clip, with_target=self.with_target)
