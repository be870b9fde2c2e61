"""Description metrics (``describe``: corpus BLEU-4, ROUGE-L) on hand-computed values, as ``score`` prints them, and
at one level of a HIVAU file."""

from __future__ import annotations

import json

import pytest
import torch

from tests.test_caption_annotations import hivau_entry
from vau.data import Sample
from vau.eval.score import main
from vau.text_metrics import DescriptionBLEU, DescriptionRougeL


def _row(description, video="v.mp4", reasoning=""):
    return Sample(task="describe", video=video, description=description, reasoning=reasoning)


def test_bleu4_and_rouge_l_equal_their_hand_computed_values():
    # n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty); longest common subsequence 5 of 6 words
    reply, row = "the cat sat on the mat", _row("the cat sat on a mat")
    bleu, rouge = DescriptionBLEU(), DescriptionRougeL()
    for metric in (bleu, rouge):
        metric.update([reply], [row])
    assert float(bleu.compute()) == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-6)
    assert float(rouge.compute()) == pytest.approx(5 / 6, abs=1e-6)
    assert int(bleu.total) == int(rouge.total) == 1


def test_bleu_is_corpus_level_and_merges_like_a_ddp_sync():
    rows = [_row("a man breaks the window of a parked car", "a.mp4"), _row("two cars collide at a crossing", "b.mp4"),
            _row("a quiet street with people walking", "c.mp4")]
    replies = ["a man breaks a window of the car", "two cars collide at the crossing", "people walk in a street"]
    whole = DescriptionBLEU()
    whole.update(replies, rows)
    singles = []
    for reply, row in zip(replies, rows):
        one = DescriptionBLEU()
        one.update([reply], [row])
        singles.append(float(one.compute()))
    assert float(whole.compute()) != pytest.approx(sum(singles) / 3)  # n-gram counts pooled, not sentence scores
    first, second = DescriptionBLEU(), DescriptionBLEU()
    first.update(replies[:2], rows[:2])
    second.update(replies[2:], rows[2:])
    first.merge_state(second)  # what a DDP sync does with the summed states
    assert float(first.compute()) == pytest.approx(float(whole.compute()), abs=1e-7)


def test_only_describe_rows_with_a_text_count_and_tags_are_read_through():
    bleu, rouge = DescriptionBLEU(), DescriptionRougeL()
    qa = Sample(task="qa", video="q.mp4", description="ignored", options=("a", "b", "c", "d"), answer="A")
    empty = _row("", "e.mp4")
    row = _row("a man runs", "d.mp4", reasoning="running away from a fire is normal")
    reply = "<think>a man runs\n  running away from a fire is normal</think>"  # judged text: the <think> body
    for metric in (bleu, rouge):
        metric.update(["anything", "anything", reply], [qa, empty, row])
        assert int(metric.total) == 1
        assert float(metric.compute()) == pytest.approx(1.0)
    assert torch.isnan(DescriptionBLEU().compute()) and torch.isnan(DescriptionRougeL().compute())


def test_score_prints_description_metrics_of_one_hivau_level(tmp_path, capsys):
    annotations = tmp_path / "ucf_database_test.json"
    annotations.write_text(json.dumps({"Robbery001_x264": hivau_entry(),
                                       "Fighting002_x264": hivau_entry(video_summary="Two men fight in a bar.")}))
    predictions = tmp_path / "describe.jsonl"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in [
        {"video": "Robbery001_x264.mp4", "task": "describe", "response": "A shop is robbed."},
        {"video": "Fighting002_x264.mp4", "task": "describe", "response": "Two men dance in a bar."}]))
    out = tmp_path / "m.json"
    assert main([f"annotations={annotations}", "format=hivau", "level=video", f"predictions={predictions}",
                 f"output={out}"]) == 0
    printed = capsys.readouterr().out
    assert "bleu4" in printed and "rouge_l" in printed
    metrics = json.loads(out.read_text())["tasks"]["describe"]["metrics"]
    # ROUGE-L: 4/4 words of the first; "two men in a bar" of 6 and 6 words in the second
    assert metrics["describe_rouge_l"]["value"] == pytest.approx(100 * (1 + 5 / 6) / 2, abs=0.01)
    assert metrics["describe_rouge_l"]["n"] == 2 and 0 < metrics["describe_bleu4"]["value"] < 100


def test_score_level_names_the_levels_a_file_has(tmp_path, capsys):
    annotations = tmp_path / "ucf_database_test.json"
    annotations.write_text(json.dumps({"Robbery001_x264": hivau_entry()}))
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(json.dumps({"video": "Robbery001_x264.mp4", "task": "describe", "response": "x"}) + "\n")
    assert main([f"annotations={annotations}", "format=hivau", "level=scene", f"predictions={predictions}"]) == 2
    err = capsys.readouterr().err
    assert "level=scene" in err and "its levels: clip, event, video" in err
