"""``python -m vau predict task=vad``: sliding windows over long real videos -> one anomaly score per frame."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from vau.cli import main
from vau.datamodules.decoders import PyAVSource
from vau.eval.vad import VADSettings, WindowPlan, frame_scores, plan_windows

from .test_predict import _write_video


@pytest.mark.parametrize("total, rate", [(250, 25), (1800, Fraction(30000, 1001)), (901, 30), (31, 10), (3, 30)])
@pytest.mark.parametrize("window, stride, n", [(4.0, 2.0, 8), (2.0, 2.0, 4), (3.0, 0.1, 6), (60.0, 30.0, 8)])
def test_window_plans_cover_the_video_and_share_frames(total, rate, window, stride, n):
    plan = plan_windows(total, rate, VADSettings(window_seconds=window, stride_seconds=stride, frames_per_window=n))
    duration = total / float(rate)
    assert plan.indices.tolist() == sorted(set(plan.indices.tolist()))  # each frame decoded once
    assert 0 <= plan.indices.min() and plan.indices.max() < total
    assert plan.windows[0][0] == 0.0 and plan.windows[-1][1] == pytest.approx(duration, abs=1e-9)  # the end reached
    used = set()
    for start, end, positions in plan.windows:
        assert len(positions) == n and positions == sorted(positions)
        frames = plan.indices[positions]
        times = (frames + 0.5) / float(rate)
        # a frame shown for a window lies in it (within one frame: a frame is sampled at its own time)
        assert (times >= start - 1 / float(rate)).all() and (times <= end + 1 / float(rate)).all()
        used.update(positions)
    assert used == set(range(len(plan.indices)))  # nothing decoded that no window shows
    starts = [w[0] for w in plan.windows]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


def test_frame_scores_average_the_covering_windows():
    plan = WindowPlan(indices=np.arange(10), windows=[(0.0, 4.0, []), (2.0, 6.0, []), (4.0, 8.0, [])])
    scores = frame_scores(plan, [0.2, 0.6, 1.0], 10, 1)  # 1 fps: frame i's middle is i + 0.5 s
    assert scores == pytest.approx([0.2, 0.2, 0.4, 0.4, 0.8, 0.8, 1.0, 1.0, 1.0, 1.0])


def test_vad_settings_name_the_bad_key():
    with pytest.raises(ValueError, match="vad.window_sec: not a key"):
        VADSettings.from_cfg({"window_sec": 2})
    with pytest.raises(ValueError, match="vad.stride_seconds=0.0"):
        VADSettings.from_cfg({"stride_seconds": 0})


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    _write_video(folder / "long.mp4", (64, 48), 20, fps=10)
    _write_video(folder / "short.mp4", (64, 48), 1, fps=10)
    (folder / "broken.mp4").write_bytes(b"\x00" * 100)
    return folder


def test_predict_vad_scores_every_frame_decodes_each_once_and_resumes(long_clips, overrides, tmp_path, capsys,
                                                                      monkeypatch):
    requested: list[int] = []
    original = PyAVSource.frames

    def counting(self, indices):  # a spy on the real decoder: which frames the run asked for, in all its calls
        if str(self.path).endswith("long.mp4"):
            requested.extend(int(i) for i in indices)
        return original(self, indices)

    monkeypatch.setattr(PyAVSource, "frames", counting)
    out = tmp_path / "frames.jsonl"
    args = ["predict", *overrides, f"videos={long_clips}", "task=vad", f"out={out}", "vad.window_seconds=4",
            "vad.stride_seconds=2", "vad.frames_per_window=4"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "2 video(s) scored" in printed and "1 unreadable" in printed
    records = {r["video"]: r for r in map(json.loads, out.read_text().splitlines())}
    long = records["long.mp4"]
    assert len(long["frame_scores"]) == long["frames"] == 200
    assert all(0.0 <= s <= 1.0 for s in long["frame_scores"])
    assert [w["start"] for w in long["windows"]] == [0, 2, 4, 6, 8, 10, 12, 14, 16]
    # a window's frames are decoded once for all windows that show them: 4 frames per 4 s, shared by overlaps
    assert long["frames_decoded"] == 20 and len(requested) == 20 == len(set(requested))
    assert len(records["short.mp4"]["frame_scores"]) == 10 and len(records["short.mp4"]["windows"]) == 1
    assert "broken.mp4" in (tmp_path / "frames.jsonl.unreadable.txt").read_text()

    # resume: a killed run's torn last line is cut and that video scored again; the others are kept
    lines = out.read_text().splitlines()
    out.write_text(lines[0] + "\n" + lines[1][:50])
    assert main(args) == 0
    assert "1 video(s) scored" in capsys.readouterr().out
    again = {r["video"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert again == records  # the same scores: greedy replies, the same frames
    # another window setting must not be mixed into the same file
    assert main([*args[:-1], "vad.frames_per_window=2"]) == 2
    assert "resuming would mix" in capsys.readouterr().err

    # the file is what `score frame_scores=` reads
    ann = tmp_path / "ucf.txt"
    ann.write_text("long.mp4 Fighting 50 120 -1 -1\nshort.mp4 Normal -1 -1 -1 -1\n")
    assert main(["score", f"annotations={ann}", "format=ucf_crime", f"frame_scores={out}"]) == 0
    assert "| All | constant | 50.00 |" in capsys.readouterr().out


def test_window_answer_score_is_the_anomaly_share_of_both_continuations(tiny_backbone, demo_root, overrides):
    """The batched, padded two-continuation score equals log-probabilities computed one unpadded sequence at a time."""
    from vau.components import build_components
    from vau.config import compose
    from vau.datamodules.encoding import model_inputs
    from vau.datamodules.video import read_clip
    from vau.eval.vad import WindowScorer
    from vau.registry import SAMPLERS
    from vau.tasks import Sample

    cfg = compose("demo", [*overrides, "data.task=cls_binary"])
    _, data, module = build_components(cfg, demo_root, with_target=False)
    module.eval()
    scorer = WindowScorer(module, data, "cls_binary", 2, torch.device("cpu"))
    video = sorted((demo_root / "videos").glob("*.mp4"))[0]
    clip = read_clip(video, SAMPLERS.get("uniform")(num_frames=4), size_fn=data.size_fn)
    items = [data.encoder(Sample(task="cls_binary", video=video.name, video_path=str(video)), clip,
                          with_target=False)] * 3
    batch = data.collate(items)
    inputs = model_inputs(batch, prompt_only=True)
    texts = ["<think>a red square</think>\n<answer>Normal</answer>", "<think>x</think>Anomaly",
             "<think>long reasoning " * 3 + "</think><answer>Anomaly</answer>"]
    with torch.no_grad():
        scores = scorer._answer_scores(inputs, texts, batch["samples"])
        assert scores[1] == 1.0 and scorer.no_answer == 1  # no <answer>: the parsed reply decides
        tokenizer = module.backbone.processor.tokenizer
        for row in (0, 2):
            prefix = texts[row][: texts[row].index("<answer>") + len("<answer>")]
            logp = []
            for answer in ("Anomaly", "Normal"):
                ids = torch.tensor([tokenizer(prefix + answer + "</answer>", add_special_tokens=False)["input_ids"]])
                one = module.backbone.slice_vision(inputs, [row])
                full = module.backbone.append_text(one, ids, torch.ones_like(ids))
                logits = module.model(**full, use_cache=False).logits[0, -ids.shape[1] - 1:-1].float()
                logp.append(float(torch.log_softmax(logits, -1).gather(-1, ids[0].unsqueeze(-1)).sum()))
            assert scores[row] == pytest.approx(1 / (1 + math.exp(logp[1] - logp[0])), abs=1e-5)


def test_predict_vad_on_the_xd_violence_copy_of_the_demo_scores_at_frame_level(demo_root, overrides, tmp_path, capsys):
    """XD-Violence's extension-less, class-coded names end to end: predict finds each clip in ``xd_videos/``, writes
    one score per frame under the annotation's name, and ``score format=xd_violence`` reads them."""
    ann = demo_root / "test_xd_violence.txt"
    out = tmp_path / "xd.jsonl"
    assert main(["predict", *overrides, f"annotations={ann}", "data.format=xd_violence",
                 f"data.video_root={demo_root / 'xd_videos'}", "task=vad", f"out={out}", "vad.window_seconds=1",
                 "vad.stride_seconds=0.5", "vad.frames_per_window=2"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    names = [line.split()[0] for line in ann.read_text().splitlines()]
    assert sorted(r["video"] for r in records) == sorted(names) and all(r["frame_scores"] for r in records)
    capsys.readouterr()
    metrics = tmp_path / "m.json"
    assert main(["score", f"annotations={ann}", "format=xd_violence", f"frame_scores={out}", f"output={metrics}"]) == 0
    assert "| All | constant | 50.00 |" in capsys.readouterr().out
    assert 0.0 <= json.loads(metrics.read_text())["sources"]["all"]["model"]["auc"] <= 1.0
