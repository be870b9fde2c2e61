"""``python -m vau data difficulty`` (a model's pass rate per training row) and ``data.difficulty`` (a GRPO run keeps a
band of pass rates)."""

from __future__ import annotations

import json

import pytest

from vau.cli import main
from vau.config import compose


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pass_rates_per_training_row_resume_and_refuse_other_settings(overrides, demo_root, tmp_path, capsys):
    out = tmp_path / "difficulty.jsonl"
    args = ["data", "difficulty", *overrides, f"annotations={demo_root / 'train.csv'}", "num_generations=3",
            f"out={out}", "temperature=1.0"]
    assert main(args) == 0
    assert "8 row(s) sampled 3 times, 0 already" in capsys.readouterr().out
    records = _records(out)
    assert len(records) == 8 and len({(r["video"], r["row"]) for r in records}) == 8
    for r in records:
        assert r["task"] == "qa" and r["num_generations"] == 3
        assert r["pass_rate"] in (0.0, 1 / 3, 2 / 3, 1.0) and r["pass_at_g"] == (r["pass_rate"] > 0)
        assert 0.0 <= r["mean_reward"] <= 2.0  # format + choice accuracy, each at most 1
        assert r["run"]["num_generations"] == 3

    # a killed run's torn last line: cut, and that row sampled again; the others are kept
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])
    assert main(args) == 0
    assert "1 row(s) sampled 3 times, 7 already" in capsys.readouterr().out
    assert len(_records(out)) == 8
    # another number of samples would mix two estimates in one file
    assert main([*args[:-2], "num_generations=2", f"out={out}"]) == 2
    assert "resuming would mix" in capsys.readouterr().err
    assert main(["data", "difficulty", *overrides, f"out={out}"]) == 2
    assert "needs annotations=" in capsys.readouterr().err


def test_training_keeps_the_pass_rate_band(overrides, demo_root, tmp_path, tiny_backbone):
    from vau.data.readers import read_rows
    from vau.datamodules.vau_bench import VAUBenchDataModule

    rows = [r for r in read_rows(demo_root / "train.csv", "vau_bench") if r.has_question]
    rates = [0.0, 0.5, 1.0, 0.25, 0.0, 1.0]  # the last rows are not in the file: kept
    path = tmp_path / "difficulty.jsonl"
    path.write_text("".join(json.dumps({"video": r.video, "row": r.row, "task": "qa", "pass_rate": p}) + "\n"
                            for r, p in zip(rows, rates)))

    def train_videos(*extra):
        cfg = compose("demo", [*overrides, f"data.difficulty.file={path}", *extra])
        dm = VAUBenchDataModule(cfg.data, cfg.sampler, tiny_backbone, tiny_backbone.pad_id, seed=0)
        dm.setup("fit")
        return [s.video for s in dm.datasets["train"].samples]

    kept = train_videos("data.difficulty.keep=[0.01,0.99]")
    assert kept == [rows[1].video, rows[3].video] + [r.video for r in rows[len(rates):]]
    assert len(train_videos()) == len(rows)  # the default band keeps everything
    # curriculum: easy -> hard (falling pass rate; unlisted rows last), and the training stream in that order
    order = train_videos("data.difficulty.curriculum=true")
    assert order[:6] == [rows[i].video for i in (2, 5, 1, 3, 0, 4)]
    cfg = compose("demo", [*overrides, f"data.difficulty.file={path}", "data.difficulty.curriculum=true"])
    dm = VAUBenchDataModule(cfg.data, cfg.sampler, tiny_backbone, tiny_backbone.pad_id, seed=0)
    dm.setup("fit")
    streamed = [s.video for batch in dm.train_dataloader() for s in batch["samples"]]
    assert streamed == order
    with pytest.raises(ValueError, match="curriculum=true needs data.difficulty.file"):
        VAUBenchDataModule(compose("demo", [*overrides, "data.difficulty.curriculum=true"]).data, cfg.sampler,
                           tiny_backbone, tiny_backbone.pad_id, seed=0)
    with pytest.raises(ValueError, match=r"data.difficulty.keep=\[0.9, 0.1\]"):
        train_videos("data.difficulty.keep=[0.9,0.1]")
    path.write_text('{"video": "x.mp4"}\n')
    with pytest.raises(ValueError, match="line 1: not a pass-rate record"):
        train_videos()
