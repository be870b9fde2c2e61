"""A second look (issue 20): reading the window a reply asks for, decoding that window's frames from a real video where
8 uniform frames missed a brief anomaly, rendering the conversation that follows with the processor, and the whole
look-again inference (``module.generation.look_again``) through a real Lightning predict/test."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from vau.backbones.tiny import teach_replies
from vau.components import build_components
from vau.config import compose
from vau.data.annotations import read_annotations
from vau.data.synthetic import KINDS, generate
from vau.datamodules.dataset import VideoTaskDataset
from vau.datamodules.encoding import Collator, SampleEncoder, model_inputs
from vau.datamodules.samplers import UniformSampler, WindowSampler
from vau.datamodules.video import read_clip
from vau.eval.score import Prediction, format_report, score
from vau.parsing import LOOK_REASONS, look_request
from vau.registry import BACKBONES, load_builtins
from vau.tasks import get_task
from vau.tasks.base import LOOK_CHAIN_KEY, LOOK_CUE_KEY, LOOK_INSTRUCTION, look_turn

load_builtins()
TWINS = [n for n in BACKBONES.names() if n.startswith("tiny_")]


@pytest.mark.parametrize("reply, window, reason", [
    ("<think>x</think><answer>B</answer><look>[12, 15.5]</look>", (12.0, 15.5), "ok"),
    ("<look> 0:12 - 0:15 </look>", (12.0, 15.0), "ok"),
    ("<look>[-2, 3]</look>", (0.0, 3.0), "clamped"),
    ("<look>[28, 45]</look>", (28.0, 30.0), "clamped"),
    ("<look>[7, 7]</look>", (6.5, 7.5), "widened"),
    ("<look>[29.9, 30]</look>", (29.0, 30.0), "widened"),  # widened inside the video
    ("<look>[9, 4]</look>", None, "reversed"),
    ("<look>[31, 40]</look>", None, "outside"),
    ("<look>the fire</look>", None, "unparsed"),
    ("<look>[1, 2] and [5, 6]</look>", None, "unparsed"),
    ("<look></look>", None, "unparsed"),
    ("<answer>B</answer>", None, "no_look"),
    ("<look>[1, 2]", None, "no_look"),  # never closed
    ("\x00" * 50, None, "no_look"),
    (None, None, "no_look"),
    ("<look>" + "1" * 10000 + "</look>", None, "unparsed"),
])
def test_look_request_fits_the_window_or_names_why_not(reply, window, reason):
    assert reason in LOOK_REASONS
    assert look_request(reply, duration=30.0) == (window, reason)


def test_a_look_at_the_named_window_shows_the_brief_anomaly_the_uniform_frames_missed(tmp_path):
    """On long clips with 1-2 s anomalies, 8 frames decoded from a 3 s window around the event show its coloured
    square in every clip, including those whose 8 uniform frames showed nothing; timestamps are the true ones."""
    root = generate(tmp_path / "long", n_train=1, n_val=1, n_test=8, seed=0, min_seconds=30.0, max_seconds=40.0,
                    event_seconds=[1, 2])
    def coloured(clip, color):
        return (np.abs(clip.frames.astype(int) - np.array(color)).max(axis=-1) < 40).sum(axis=(1, 2)) > 500

    missed = 0
    for ann in read_annotations(root / "test.csv"):
        if ann.is_normal:
            continue
        kind = next(k for k in KINDS if k.anomaly_class == ann.anomaly_class)
        path = root / "videos" / ann.video

        uniform = read_clip(path, UniformSampler(num_frames=8))
        missed += not coloured(uniform, kind.color).any()
        centre = sum(ann.interval) / 2
        reply = f"<look>[{centre - 1.5:.1f}, {centre + 1.5:.1f}]</look>"
        window, reason = look_request(reply, duration=uniform.total_frames / uniform.fps)
        assert reason in ("ok", "clamped")
        look = read_clip(path, WindowSampler(window, num_frames=8))
        times = look.indices / look.fps
        assert window[0] - 1 / look.fps <= times.min() and times.max() <= window[1] and len(set(look.indices)) == 8
        assert coloured(look, kind.color).any(), ann.video
    assert missed >= 1  # the data holds clips a single pass misses (9 of 12 in tests/test_synthetic.py's split)


@pytest.mark.parametrize("name", TWINS)
def test_the_conversation_after_a_look_is_the_first_prompt_the_reply_and_the_window_as_a_second_video(
        name, cache_dir, demo_root):
    """What the model sees after it asked for a look: its first prompt token for token, its reply as the assistant's
    turn, then a user turn holding the window's frames as a second video (true timestamps) and the look text, all
    rendered by the backbone's own processor (so Qwen3-VL's timestamp text and the M-RoPE layout are its own)."""
    backbone = BACKBONES.get(name)({"cache_dir": str(cache_dir), "seed": 0, "max_pixels": 3136})
    spec = get_task("qa")
    size_fn, size_key = backbone.frame_size()
    samples = [spec.sample(a, str(demo_root / "videos" / a.video)) for a in read_annotations(demo_root / "test.csv")]
    dataset = VideoTaskDataset(samples, SampleEncoder(backbone, spec, look_instruction=True), UniformSampler(4),
                               train=False, with_target=False, size_fn=size_fn, size_key=size_key)
    first = dataset.item((0, 1))
    reply, window = "<think>a square</think><answer>B</answer><look>[0.5, 1.5]</look>", (0.5, 1.5)
    look = dataset.look_item((0, 1), samples[1], [(reply, window, look_turn(window))], num_frames=4)

    tokenizer = backbone.processor.tokenizer
    assert LOOK_INSTRUCTION in tokenizer.decode(first["prompt_ids"])
    ids = look["prompt_ids"]
    assert torch.equal(ids[: len(first["prompt_ids"])], first["prompt_ids"])  # the first turn as it was asked
    rest = tokenizer.decode(ids[len(first["prompt_ids"]):])
    assert rest.startswith(reply) and rest.rstrip().endswith(tokenizer.decode(first["prompt_ids"][-3:]).rstrip())
    assert look_turn(window) in rest
    times = look["look_frame_times"][0]
    assert len(times) == 4 and window[0] <= min(times) and max(times) <= window[1] and times == sorted(times)
    grid = look["vision"]["video_grid_thw"]
    assert grid.shape[0] == 2 and torch.equal(grid[0], first["vision"]["video_grid_thw"][0])  # two videos, in order
    video_id = backbone.processor.tokenizer.convert_tokens_to_ids(backbone.processor.video_token)
    merge = backbone.processor.video_processor.merge_size ** 2
    assert int((ids == video_id).sum()) == int(grid.prod(dim=1).sum()) // merge  # both videos' tokens are there
    if "qwen3" in name:  # Qwen3-VL writes each temporal patch's mean time as text: the window's true times
        stamps = [f"<{(a + b) / 2:.1f} seconds>" for a, b in zip(times[::2], times[1::2])]
        assert rest.index(stamps[0]) < rest.index(stamps[1]) < rest.index(look_turn(window)), rest[:200]


LOOKS, FINAL = "<think>a look</think><answer>A</answer><look>[0.5, 1.5]</look>", "<reflect>seen</reflect><think>again</think><answer>B</answer>"


@pytest.fixture(scope="module")
def looking(cache_dir, demo_root, tmp_path_factory):
    """A tiny model taught by SFT on look chains (teacher forcing, in-process) to answer A and look at [0.5, 1.5] s
    first, then, shown that window, to answer B: the module and DataModule of a ``look_again`` run over the demo's test split. Built once:
    the tests only evaluate it."""
    out = tmp_path_factory.mktemp("look")
    cfg = compose("demo", [f"paths.cache_dir={cache_dir}", f"data.root={demo_root}", "data.generate=null",
                           f"paths.output_dir={out}", "data.eval_batch_size=2", "module.generation.look_again=true",
                           "module.generation.look_frames=4", "module.generation.max_new_tokens=48",
                           "data.qa_shifts=null", "sampler.num_frames=4"])
    backbone, data, module = build_components(cfg, out, with_target=False)
    data.setup()
    dataset = data.datasets["test"]
    chains = [replace(s, extra={**s.extra, LOOK_CHAIN_KEY: {"window": [0.5, 1.5], "first": LOOKS, "final": FINAL}})
              for s in dataset.samples]  # look chains, trained on as SFT items are (both replies are targets)
    teach = VideoTaskDataset(chains, data.encoder, data.eval_sampler, train=False, with_target=True,
                             size_fn=data.size_fn, size_key=data.size_key, look_frames=4)
    batch = data.collate([teach[(0, i)] for i in range(len(teach))])
    # until 0.002: at a mean token loss of 0.02 one token in a few hundred can still lose the greedy argmax (one
    # machine's model wrote "</lok>" for one clip)
    loss = teach_replies(module.model, model_inputs(batch), batch["labels"], max_steps=400, until=0.002)
    assert loss < 0.002, "the tiny model did not learn the look targets"
    return module, data, dataset


def test_predict_looks_again_at_the_window_the_reply_names(looking):
    module, data, dataset = looking
    tokenizer = module.backbone.processor.tokenizer
    assert LOOK_INSTRUCTION in tokenizer.decode(dataset.item((0, 0))["prompt_ids"])  # look_again offers the look
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    records = [r for batch in trainer.predict(module, dataloaders=data.eval_loader(dataset, 2)) for r in batch]
    assert len(records) == len(dataset)
    for record in records:
        (look,) = record["looks"]
        assert look["window"] == [0.5, 1.5] and look["reason"] == "ok" and look["requested"] == "[0.5, 1.5]"
        assert len(look["frame_times"]) == 4 and all(0.5 <= t <= 1.5 for t in look["frame_times"])
        first, second = record["response"].split("\n", 1)
        assert first == LOOKS and second == FINAL  # generation stopped at </look> and went on after the look
        assert record["initial"] == "A" and record["prediction"] == "B"

    # score and the report read the looks: the windows, the answer before them, the share of replies that looked
    annotations = read_annotations(Path(dataset.samples[0].video_path).parents[1] / "test.csv")
    report = score(annotations, [Prediction(r["video"], r["task"], r["response"], "here", r) for r in records], ["qa"])
    assert report["looks"] == {"replies": 4, "looked": 1.0, "refused": {}, "looked_frames_per_reply": 4.0}
    assert all(c["looks"] == [[0.5, 1.5]] and c["initial"].startswith("A") and len(c["look_times"]) == 4
               for c in report["clips"])
    truth_b = np.mean([s.answer == "B" for s in dataset.samples])
    assert report["tasks"]["qa"]["overall"]["accuracy"] == pytest.approx(truth_b)
    assert "Looks: 4 replies, 100.0% shown a window, 4.0 looked-at frames per reply" in format_report(report, "t")


def test_test_stage_reports_initial_and_final_answers_and_the_look_rate(looking):
    module, data, dataset = looking
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.test(module, dataloaders=data.eval_loader(dataset, 2), verbose=False)
    truth_a = np.mean([s.answer == "A" for s in dataset.samples])
    truth_b = np.mean([s.answer == "B" for s in dataset.samples])
    assert metrics["test/look_rate"] == 1.0 and metrics["test/looked_frames"] == 4.0
    assert metrics["test/look_refused"] == 0.0 and metrics["test/format_rate"] == 1.0  # a look reply is well formed
    assert metrics["test/qa_initial_accuracy"] == pytest.approx(truth_a)
    assert metrics["test/qa_accuracy"] == pytest.approx(truth_b)


class _Vanish(L.Callback):
    """Moves every video away after its batch was read, before the step: the look cannot read it again."""

    def on_predict_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        for sample in batch["samples"]:
            path = Path(sample.video_path)
            path.rename(path.with_suffix(".gone"))


def test_a_look_at_a_video_that_cannot_be_read_again_is_refused_and_the_first_answer_stands(looking, tmp_path):
    module, data, dataset = looking
    moved = []
    for sample in dataset.samples:  # copies, so the session's demo videos stay
        copy = tmp_path / Path(sample.video_path).name
        copy.write_bytes(Path(sample.video_path).read_bytes())
        moved.append(copy)
    dataset = data.dataset_of([replace(s, video_path=str(c)) for s, c in zip(dataset.samples, moved)])
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[_Vanish()])
    records = [r for batch in trainer.predict(module, dataloaders=data.eval_loader(dataset, 2)) for r in batch]
    for record in records:
        (look,) = record["looks"]
        assert look["window"] is None and look["reason"] == "unreadable" and look["frame_times"] == []
        assert record["response"] == LOOKS and record["initial"] == record["prediction"] == "A"


def test_look_settings_are_checked_with_the_key_named(overrides):
    for bad, key in (("module.generation.look_frames=0", "look_frames=0"),
                     ("module.generation.look_frame_budget=2", "look_frame_budget=2"),
                     ("module.generation.self_correct=true", "self_correct")):
        cfg = compose("demo", [*overrides, "module.generation.look_again=true", bad])
        with pytest.raises(ValueError, match=key):
            build_components(cfg, "unused", with_target=False)


@pytest.mark.parametrize("name", TWINS)
def test_a_look_chain_trains_on_both_replies_and_nothing_else(name, cache_dir, demo_root):
    """SFT of a look chain: one item holds the whole two-video conversation; its labels are exactly the first reply
    (up to </look>) and the final reply, each closed by the end-of-turn token, as the processor rendered them."""
    backbone = BACKBONES.get(name)({"cache_dir": str(cache_dir), "seed": 0, "max_pixels": 3136})
    spec = get_task("qa")
    size_fn, size_key = backbone.frame_size()
    first, final = "<think>a glance</think><answer>C</answer><look>[0.5, 1.5]</look>", "<reflect>r</reflect><answer>B</answer>"
    samples = [replace(spec.sample(a, str(demo_root / "videos" / a.video)),
                       extra={LOOK_CHAIN_KEY: {"window": [0.5, 1.5], "first": first, "final": final}})
               for a in read_annotations(demo_root / "test.csv")[:2]]
    dataset = VideoTaskDataset(samples, SampleEncoder(backbone, spec, look_instruction=True), UniformSampler(4),
                               train=True, with_target=True, size_fn=size_fn, size_key=size_key, look_frames=4)
    batch = Collator(backbone.pad_id)([dataset[(0, 0)], dataset[(0, 1)]])
    tokenizer, end = backbone.processor.tokenizer, backbone.end_of_turn_id
    for row in range(2):
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        kept = labels != -100
        assert torch.equal(labels[kept], ids[kept])
        assert tokenizer.decode(labels[kept]) == tokenizer.decode(
            [*tokenizer(first, add_special_tokens=False)["input_ids"], end,
             *tokenizer(final, add_special_tokens=False)["input_ids"], end])
        assert int((ids[kept] == end).sum()) == 2  # each reply closed once; no prompt token is a target
    assert batch["vision"]["video_grid_thw"].shape[0] == 4  # two videos per conversation
    loss = backbone.model(**model_inputs(batch), labels=batch["labels"]).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_the_cue_shows_where_a_brief_anomaly_is_without_showing_what_it_is(tmp_path):
    """With ``cue_seconds`` every clip shows a grey border around its anomaly (a normal clip: at a random place), so
    8 uniform frames over a long clip see *where* to look far more often than *what* happens; the CSV rows are those
    of the data without the cue plus the cue's seconds."""
    spec = dict(n_train=1, n_val=1, n_test=12, seed=0, min_seconds=30.0, max_seconds=40.0, event_seconds=[1, 2])
    plain = generate(tmp_path / "plain", **spec)
    cued = generate(tmp_path / "cue", **spec, cue_seconds=4.0)
    assert (plain / "test.csv").read_text().splitlines()[1] in (cued / "test.csv").read_text().splitlines()[1]

    def bordered(clip):
        return (np.abs(clip.frames[:, :2].astype(int) - 128).max(axis=(1, 2, 3)) < 30)

    saw_cue = saw_event = 0
    for ann in read_annotations(cued / "test.csv"):
        cue = (float(ann.extra["Cue Start"]), float(ann.extra["Cue End"]))
        path = cued / "videos" / ann.video
        every = read_clip(path, WindowSampler((0.0, 30.0), num_frames=120))
        times = every.indices / every.fps
        inside = (times >= cue[0] + 0.2) & (times < cue[1] - 0.2)
        outside = (times < cue[0] - 0.2) | (times >= cue[1] + 0.2)
        assert bordered(every)[inside].all() and not bordered(every)[outside].any(), ann.video
        if not ann.is_normal:
            assert cue[0] <= ann.interval[0] and ann.interval[1] <= cue[1]
        uniform = read_clip(path, UniformSampler(num_frames=8))
        seen = uniform.indices / uniform.fps
        saw_cue += bool(((seen >= cue[0]) & (seen < cue[1])).any())
        if not ann.is_normal:
            saw_event += bool(((seen >= ann.interval[0]) & (seen < ann.interval[1])).any())
    assert saw_cue >= 9 and saw_event <= 4, (saw_cue, saw_event)  # measured: the cue in 12 of 12, the event in 3 of 9


def test_look_chains_teach_a_look_exactly_where_the_sampled_frames_missed_the_anomaly(tmp_path, cache_dir):
    """``data.look_chains``: on cue data, a training clip whose sampled frames miss its anomaly (and every normal
    clip) trains on a look at its cue's window; a clip whose frames show the anomaly keeps its plain target."""
    root = generate(tmp_path / "cue", n_train=12, n_val=4, n_test=4, seed=0, min_seconds=30.0, max_seconds=40.0,
                    event_seconds=[1, 2], cue_seconds=4.0)
    cfg = compose("demo", [f"paths.cache_dir={cache_dir}", f"data.root={root}", "data.generate=null",
                           f"paths.output_dir={tmp_path / 'out'}", "data.look_chains=true",
                           "module.generation.look_again=true", "module.generation.look_frames=4",
                           "sampler.num_frames=8"])
    backbone, data, _ = build_components(cfg, tmp_path / "out")
    data.setup()
    train, tokenizer = data.datasets["train"], backbone.processor.tokenizer
    looked = plain = 0
    for index, sample in enumerate(train.samples):
        item = train[(0, index)]
        clip = read_clip(sample.video_path, train.sampler, np.random.default_rng([train.seed, 0, index]),
                         size_fn=train.size_fn)
        times = np.asarray(clip.timestamps)
        missed = sample.is_normal or not ((times >= sample.interval[0]) & (times < sample.interval[1])).any()
        labelled = tokenizer.decode(item["target_ids"])
        if missed:
            looked += 1
            cue = sample.extra[LOOK_CUE_KEY]
            assert item["vision"]["video_grid_thw"].shape[0] == 2 and "look_frame_times" in item
            assert all(cue[0] <= t <= cue[1] for t in item["look_frame_times"][0])
            prompt_labels = tokenizer.decode(item["prompt_labels"][item["prompt_labels"] != -100])
            assert f"<look>[{cue[0]:g}, {cue[1]:g}]</look>" in prompt_labels and labelled.startswith("<reflect>")
        else:
            plain += 1
            assert "prompt_labels" not in item and "<look>" not in labelled
    assert looked and plain, (looked, plain)
    # Evaluation asks the question once and lets the model decide whether to look: a validation or test prompt that
    # held a look chain would show the annotated window's frames to a model that never asked for them.
    for split in ("val", "test"):
        dataset = data.datasets[split]
        missed = 0
        for index, sample in enumerate(dataset.samples):
            item = dataset[(0, index)]
            assert "prompt_labels" not in item and item["vision"]["video_grid_thw"].shape[0] == 1, (split, index)
            prompt = tokenizer.decode(item["prompt_ids"])
            assert prompt.count("assistant") == 1 and prompt.endswith("assistant\n"), (split, index, prompt[-300:])
            assert "<look>" not in tokenizer.decode(item["target_ids"])
            missed += sample.is_normal
        assert missed, f"no {split} clip would have had a chain to leak"
