"""Training with the options of each question in a fresh order every epoch (``data.train_option_order: shuffled``)."""

from __future__ import annotations

import pytest
import torch

from vau.registry import TASKS
from vau.tasks import Sample, get_task, task_names

OPTIONS = ("Nothing unusual happens", "A fire breaks out", "A fight breaks out", "A car crashes")


@pytest.mark.parametrize("name", task_names())
def test_every_task_reorders_options_with_its_answer(name):
    task = get_task(name)
    sample = Sample(task=name, video="v.mp4", question="What happens?", options=OPTIONS, answer="B",
                    interval=(1.0, 2.0), anomaly_class="Fire", reasoning="A red square appears.")
    moved = task.reorder_options(sample, [2, 0, 3, 1])
    if task.answer_categories(sample):  # a question with options: the answer letter follows its option's text
        assert moved.options == (OPTIONS[2], OPTIONS[0], OPTIONS[3], OPTIONS[1])
        assert moved.options["ABCD".index(moved.answer)] == OPTIONS[1]
        assert task.accuracy(f"<answer>{moved.answer}</answer>", moved) == 1.0
        assert task.prompt(moved) != task.prompt(sample)
    else:
        assert moved == sample
    with pytest.raises(ValueError, match="not an order"):
        get_task("qa").reorder_options(sample, [0, 0, 1, 2])
    assert TASKS.get(name)  # the registry is the matrix


def test_training_asks_each_question_in_a_fresh_order_per_epoch(overrides, tiny_backbone):
    from vau.config import compose
    from vau.datamodules.vau_bench import VAUBenchDataModule

    def dataset(order: str):
        cfg = compose("demo", [*overrides, f"data.train_option_order={order}"])
        dm = VAUBenchDataModule(cfg.data, cfg.sampler, tiny_backbone, tiny_backbone.pad_id, seed=0)
        dm.setup("fit")
        return dm.datasets["train"], dm.datasets["val"]

    shuffled, val = dataset("shuffled")
    kept, _ = dataset("file")
    tokenizer = tiny_backbone.processor.tokenizer
    seen = set()
    for index, sample in enumerate(shuffled.samples):
        right = sample.options["ABCD".index(sample.answer)]
        prompts = []
        for epoch in range(4):
            item, plain = shuffled[(epoch, index)], kept[(epoch, index)]
            # the same frames as without shuffling: the order comes from a stream of its own
            assert all(torch.equal(item["vision"][k], plain["vision"][k]) for k in plain["vision"])
            text = tokenizer.decode(torch.cat([item["prompt_ids"], item["target_ids"]]))
            lines = [line for line in text.splitlines() if line[:2] in ("A.", "B.", "C.", "D.")]
            options = tuple(line[3:] for line in lines)
            answer = text.rsplit("<answer>", 1)[1].split("</answer>", 1)[0]
            assert sorted(options) == sorted(sample.options)
            assert options["ABCD".index(answer)] == right  # the target's letter names the same option
            prompts.append(options)
            assert kept[(epoch, index)]["prompt_ids"].tolist() == kept[(0, index)]["prompt_ids"].tolist()
        seen.add(len(set(prompts)))
        assert shuffled[(1, index)]["prompt_ids"].tolist() == shuffled[(1, index)]["prompt_ids"].tolist()  # seeded
    assert max(seen) > 1
    assert not val.shuffle_options  # evaluation asks in the file's order (and its shifts)


def test_option_check_targets_follow_the_order_shown(overrides, tiny_backbone):
    """data.qa_option_check: training targets judge every option in the order the prompt shows it (also after a
    reorder), the one judged yes is the answer; evaluation samples carry no target flag."""
    from vau.config import compose
    from vau.datamodules.vau_bench import VAUBenchDataModule
    from vau.tasks.qa import OPTION_CHECK_KEY, option_check

    cfg = compose("demo", [*overrides, "data.qa_option_check=true", "data.train_option_order=shuffled"])
    dm = VAUBenchDataModule(cfg.data, cfg.sampler, tiny_backbone, tiny_backbone.pad_id, seed=0)
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert all(s.extra.get(OPTION_CHECK_KEY) for s in train.samples)
    assert not any(s.extra.get(OPTION_CHECK_KEY) for s in val.samples)
    tokenizer = tiny_backbone.processor.tokenizer
    for index in range(len(train.samples)):
        item = train[(3, index)]
        text = tokenizer.decode(torch.cat([item["prompt_ids"], item["target_ids"]]))
        shown = [line[3:] for line in text.splitlines() if line[:2] in ("A.", "B.", "C.", "D.")]
        answer = text.rsplit("<answer>", 1)[1].split("</answer>", 1)[0]
        judged = " ".join(f"{letter}. {option}: {'yes' if letter == answer else 'no'}."
                          for letter, option in zip("ABCD", shown))
        assert judged in text  # the walk names the options as shown, and its yes is the answer
    moved = get_task("qa").reorder_options(train.samples[0], [3, 2, 1, 0])
    assert option_check(moved).split(": yes")[0].endswith(moved.options["ABCD".index(moved.answer)])


def _training_set(overrides, backbone, *extra, conf: str = "demo"):
    """(config, the training dataset of ``conf`` with the option check and ``extra`` overrides, the tokenizer)."""
    from vau.config import compose
    from vau.datamodules.vau_bench import VAUBenchDataModule

    cfg = compose(conf, [*overrides, "data.qa_option_check=true", *extra])
    dm = VAUBenchDataModule(cfg.data, cfg.sampler, backbone, backbone.pad_id, seed=0)
    dm.setup("fit")
    return cfg, dm.datasets["train"], backbone.processor.tokenizer


def test_random_target_letters_keep_the_reasoning_true(overrides, tiny_backbone):
    """data.qa_target_letter=random: the option check still marks the true option, the answer letter is drawn afresh
    every epoch (seeded), so across epochs a question's target letters vary and match the truth only by chance."""
    from vau.config import compose
    from vau.datamodules.vau_bench import VAUBenchDataModule

    cfg, train, tokenizer = _training_set(overrides, tiny_backbone, "data.train_option_order=file",
                                          "data.qa_target_letter=random")
    letters, hits = [], 0
    for index, sample in enumerate(train.samples):
        per_epoch = []
        for epoch in range(8):
            text = tokenizer.decode(train[(epoch, index)]["target_ids"])
            marked = text.split(": yes")[0].rsplit(". ", 2)[-2][-1]  # the letter of the option judged yes
            assert marked == sample.answer  # the reasoning keeps the truth
            per_epoch.append(text.rsplit("<answer>", 1)[1].split("</answer>", 1)[0])
        assert per_epoch == [tokenizer.decode(train[(e, index)]["target_ids"]).rsplit("<answer>", 1)[1][0]
                             for e in range(8)]  # seeded: the same draw again
        letters.append(len(set(per_epoch)))
        hits += sum(letter == sample.answer for letter in per_epoch)
    assert max(letters) > 1  # not one memorisable letter per question
    assert hits < 0.6 * 8 * len(train.samples)  # right by chance (~1/4), not by design
    with pytest.raises(ValueError, match="data.qa_target_letter='x'"):
        VAUBenchDataModule(compose("demo", [*overrides, "data.qa_target_letter=x"]).data, cfg.sampler, tiny_backbone,
                           tiny_backbone.pad_id, seed=0)


def test_random_chain_targets_read_the_options_but_name_a_drawn_class(overrides, tiny_backbone, tmp_path):
    """data.qa_target_letter=random_chain: the whole target follows the drawn letter (the reasoning names that option,
    the option check marks it, the answer is it) while the description of the clip stays true; a file whose reasoning
    does not quote the answer option is refused by row."""
    import csv

    from vau.config import compose
    from vau.datamodules.vau_bench import VAUBenchDataModule

    cfg, train, tokenizer = _training_set(overrides, tiny_backbone, "data.train_option_order=shuffled",
                                          "data.qa_target_letter=random_chain")
    wrong = 0
    for index, sample in enumerate(train.samples):
        for epoch in range(4):
            text = tokenizer.decode(train[(epoch, index)]["target_ids"]).lower()
            answer = text.rsplit("<answer>", 1)[1][0].upper()
            named = text.split(", so ", 1)[1].split(".", 1)[0]  # the class the reasoning concludes
            marked = text.split(": yes")[0].rsplit(". ", 1)[-1]  # the option text judged yes
            assert named == marked  # the check marks the option the reasoning names
            shown = get_task("qa").reorder_options(sample, [int(i) for i in __import__("numpy").random.default_rng(
                [0, epoch, index, 1]).permutation(4)])
            assert shown.options["ABCD".index(answer)].lower() == named  # ... and the answer is its letter
            wrong += named != sample.options["ABCD".index(sample.answer)].lower()
            assert sample.reasoning.split(", so ")[0].lower() in text  # what the clip shows is still told
    assert 0.5 * 4 * len(train.samples) < wrong < 0.95 * 4 * len(train.samples)  # ~3/4 drawn wrong, by chance

    bad = tmp_path / "train.csv"
    with open(cfg.data.annotations.train, newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[1]["Reasoning"] = "Something happens."
    with bad.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cfg = compose("demo", [*overrides, "data.qa_target_letter=random_chain", f"data.annotations.train={bad}"])
    with pytest.raises(ValueError, match="does not quote its answer option .first: row 3"):
        VAUBenchDataModule(cfg.data, cfg.sampler, tiny_backbone, tiny_backbone.pad_id, seed=0).setup("fit")



def test_random_chain_reflect_targets_are_told_for_the_drawn_option(overrides, tiny_backbone):
    """qa_reflect with data.qa_target_letter=random_chain: every chain is retold for the drawn letter. Both <think>
    blocks end with an option check that marks the answer after it; a confirming chain answers the drawn option
    twice, a corrective one starts elsewhere and ends on it; the final answer is right only by chance, and what the
    clip shows is still told."""
    import re

    _, train, tokenizer = _training_set(overrides, tiny_backbone, conf="demo_sft_reflect_chance")
    checked = re.compile(r"\b([A-D])\. ([^:.]+): yes\.")
    confirming = corrective = wrong = total = 0
    for index, sample in enumerate(train.samples):
        for epoch in range(3):
            text = tokenizer.decode(train[(epoch, index)]["target_ids"])
            thinks = [part.split("</think>", 1)[0] for part in text.split("<think>")[1:]]
            answers = [part.split("</answer>", 1)[0].strip() for part in text.split("<answer>")[1:]]
            assert len(thinks) == len(answers) == 2, text
            for think, answer in zip(thinks, answers):  # each check marks the letter that follows it ...
                (letter, option), = checked.findall(think)
                assert letter == answer and sample.options["ABCD".index(letter)] == option  # ... shown at that letter
            first, final = answers
            if first == final:
                confirming += 1
                assert "so I keep it" in text
            else:
                corrective += 1
                assert f"what the video shows is option {final}:" in text
            rationale = thinks[0] if first == final else thinks[1]  # the annotated reasoning, retold
            named = rationale.split(", so ", 1)[1].split(".", 1)[0]
            assert named == sample.options["ABCD".index(final)].lower()  # it concludes the final answer's option
            assert sample.reasoning.split(", so ")[0] in text  # what the clip shows is still told
            wrong += final != sample.answer
            total += 1
    assert confirming and corrective  # both kinds of chain
    assert 0.5 * total < wrong < 0.95 * total  # ~3/4 told for a wrong option, by chance
