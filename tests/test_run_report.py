"""The bad-video policy judged against the split's size, and what the end-of-run table says about coverage."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from vau.callbacks import BadVideoError, BadVideoMonitor
from vau.config import compose
from vau.run import run


class _Module:
    def log(self, *args, **kwargs) -> None:
        pass


def _trainer(train_size: int) -> SimpleNamespace:
    return SimpleNamespace(datamodule=SimpleNamespace(datasets={"train": [None] * train_size}), world_size=1,
                           sanity_checking=False)


def _batches(n_clips: int, bad_at: int, batch_size: int = 4):
    for start in range(0, n_clips, batch_size):
        items = range(start, min(n_clips, start + batch_size))
        bad = [{"video": f"/v/clip{i}.mp4", "error": "empty file", "task": "qa", "row": i + 2}
               for i in items if i == bad_at]
        yield {"size": len(items) - len(bad), "bad": bad}


def test_bad_fraction_is_judged_against_the_split_not_the_clips_seen_so_far() -> None:
    # 1 unusable clip among 120 is 0.8% of the split: under data.max_bad_fraction=0.01 the run goes on, although
    # after 20 clips the running fraction was 5%.
    monitor, trainer = BadVideoMonitor(0.01), _trainer(120)
    for index, batch in enumerate(_batches(120, bad_at=1)):
        monitor.on_train_batch_start(trainer, _Module(), batch, index)
    assert len(monitor.summary()["train"].bad) == 1 and monitor.summary()["train"].size == 120
    # 1 of 97 is 1.03% of the split: past the limit, and the message says so in terms of the split.
    monitor, trainer = BadVideoMonitor(0.01), _trainer(97)
    with pytest.raises(BadVideoError, match=r"1 of 97 videos were unusable in the train split \(1\.0% of the split"):
        for index, batch in enumerate(_batches(97, bad_at=30)):
            monitor.on_train_batch_start(trainer, _Module(), batch, index)
    # A second epoch over the same broken file does not count it twice.
    monitor, trainer = BadVideoMonitor(0.02), _trainer(97)
    for _ in range(2):
        for index, batch in enumerate(_batches(97, bad_at=5)):
            monitor.on_train_batch_start(trainer, _Module(), batch, index)
    assert len(monitor.summary()["train"].bad) == 1 and monitor.skipped == 2


def test_test_table_reports_coverage_and_unreadable_clips(overrides, demo_root, tmp_path, capsys) -> None:
    root = tmp_path / "bench"
    shutil.copytree(demo_root, root)
    broken = ["demo_test_0001.mp4", "demo_test_0003.mp4"]
    for name in broken:
        (root / "videos" / name).write_bytes(b"")  # an empty file: unreadable
    cfg = compose("demo", [*overrides, f"data.root={root}", f"run_dir={tmp_path / 'run'}",
                           "data.max_bad_fraction=0.9", "data.qa_shifts=null"])  # one ask per clip
    metrics = run("test", cfg)
    assert metrics["test/coverage"] == pytest.approx(0.5)
    out = capsys.readouterr().out
    assert "test/coverage: 2 of 4 test samples predicted" in out
    assert all(name in out for name in broken)
    assert "skipped (unusable) clips per split: test 2 of 4" in out
