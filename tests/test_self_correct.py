"""Two-pass self-correction (``generation.self_correct``): the second-pass prompt, the joined reply, its metrics."""

import json

import numpy as np
import pytest
import torch

from vau.config import compose
from vau.datamodules.encoding import Collator, SampleEncoder, model_inputs
from vau.run import run
from vau.tasks import Sample, get_task
from vau.tasks.base import SECOND_PASS_PROMPT, join_passes, split_passes
from vau.tasks.metrics import view_metrics

OPTIONS = ("a dog", "a fight", "a fire", "a car")


def _clip(seconds=2, size=56):
    from vau.datamodules.video import DecodedClip

    frames = torch.randint(0, 255, (4, size, size, 3), dtype=torch.uint8)
    return DecodedClip(frames=frames, fps=2.0, indices=np.arange(0, 8, 2), total_frames=2 * seconds)


def test_joined_reply_reads_first_answer_as_initial_and_second_as_final():
    qa = get_task("qa")
    sample = Sample(task="qa", video="v.mp4", options=OPTIONS, answer="B")
    reply = join_passes("<think>looks calm</think><answer>A</answer>", "<think>a punch</think><answer>B</answer>")
    assert split_passes(reply) == ("<think>looks calm</think><answer>A</answer>", "<think>a punch</think><answer>B</answer>")
    assert qa.parse_initial(reply, sample) == "A" and qa.parse(reply, sample) == "B"
    assert qa.follows_format(reply)
    assert not qa.follows_format(join_passes("<answer>A</answer>", "<think>x</think><answer>B</answer>"))
    metrics = view_metrics(["qa"], reflection=True)
    assert {"qa_accuracy", "qa_initial_accuracy", "qa_delta_i2c", "qa_delta_c2i", "qa_reflect_rate"} <= set(metrics)
    assert "qa_initial_accuracy" not in view_metrics(["qa"])
    same = join_passes("<think>x</think><answer>B</answer>", "<think>y</think><answer>C</answer>")
    for name, expected in (("qa_initial_accuracy", 0.5), ("qa_accuracy", 0.5), ("qa_delta_i2c", 0.5),
                           ("qa_delta_c2i", 0.5), ("format_rate", 1.0)):
        metrics[name].update([reply, same], [sample, sample])
        assert float(metrics[name].compute()) == pytest.approx(expected), name


@pytest.mark.parametrize("with_padding", [False, True])
def test_second_pass_prompt_is_the_three_turn_conversation(tiny_backbone, with_padding):
    """Each row of the second pass is exactly what the processor renders for [user video+question, assistant first
    reply, user check-request], with the same video inputs; rows of different lengths are left-padded."""
    from vau.modules.base import VAUModule

    backbone = tiny_backbone
    module = VAUModule(backbone, optim={"lr": 1e-4}, task="qa", generation={"self_correct": True})
    encoder = SampleEncoder(backbone)
    samples = [Sample(task="qa", video="a.mp4", question="What happens?", options=OPTIONS, answer="B"),
               Sample(task="qa", video="b.mp4", question="What happens in the long clip at night?" * 2,
                      options=OPTIONS, answer="C")][: 2 if with_padding else 1]
    batch = Collator(backbone.pad_id)([encoder(s, _clip(), with_target=False) for s in samples])
    inputs = model_inputs(batch, prompt_only=True)
    replies = ["<think>a man hits another</think><answer>B</answer>", "<think>smoke</think><answer>C</answer>"]
    tok = backbone.processor.tokenizer
    ids = [tok(r, add_special_tokens=False)["input_ids"] + [backbone.end_of_turn_id] for r in replies[: len(samples)]]
    width = max(map(len, ids)) + 3
    first = torch.tensor([i + [backbone.pad_id] * (width - len(i)) for i in ids])  # generate pads after the eos
    second = module.second_pass(inputs, first)
    for row, (sample, reply) in enumerate(zip(samples, replies)):
        messages = encoder.messages(sample) + [
            {"role": "assistant", "content": [{"type": "text", "text": reply}]},
            {"role": "user", "content": [{"type": "text", "text": SECOND_PASS_PROMPT}]}]
        text = backbone.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        clip = _clip()
        want = backbone.processor(text=[text], videos=[clip.frames], video_metadata=[clip.metadata()],
                                  return_tensors="pt", do_sample_frames=False)["input_ids"][0]
        got = second["input_ids"][row][second["attention_mask"][row].bool()]
        assert got.tolist() == want.tolist()
        assert int(second["attention_mask"][row].sum()) == len(want)
    for key in inputs:
        if key not in ("input_ids", "attention_mask", "mm_token_type_ids"):
            assert torch.equal(second[key], inputs[key]), key
    out = module.generate_ids(second, 4, do_sample=False)  # the model takes it: video tokens match the vision inputs
    assert out.shape[0] == len(samples)


def test_self_correct_fit_reports_initial_final_and_deltas(overrides, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose("demo", [*overrides, f"run_dir={run_dir}", "module.generation.self_correct=true"])
    metrics = run("fit", cfg)
    for key in ("test/qa_accuracy", "test/qa_initial_accuracy", "test/qa_delta_i2c", "test/qa_delta_c2i"):
        assert key in metrics, key
    records = [json.loads(line) for line in (run_dir / "predictions_rank0.jsonl").read_text().splitlines()]
    assert records and all(split_passes(r["response"]) is not None for r in records)
    assert metrics["test/qa_reflect_rate"] == 1.0
    # The two numbers are those of the two passes: recompute them from the written replies.
    from vau.data.annotations import read_annotations
    from vau.datamodules.views import build_samples

    samples = {s.video: s for s in build_samples(read_annotations(cfg.data.annotations.test), "qa", train=False)}
    qa = get_task("qa")
    first = [qa.accuracy(split_passes(r["response"])[0], samples[r["video"]]) for r in records]
    final = [qa.accuracy(split_passes(r["response"])[1], samples[r["video"]]) for r in records]
    assert metrics["test/qa_initial_accuracy"] == pytest.approx(sum(first) / len(first))
    assert metrics["test/qa_accuracy"] == pytest.approx(sum(final) / len(final))
