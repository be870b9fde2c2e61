"""SRVAU-R1's reflection-aware replies: format, reflect tasks, reflection data, rewards, metrics, score, fits."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.shared_data import SHARED
from vau.data.annotations import COLUMNS, read_annotations, write_annotations
from vau.datatools.reflection import attach_chains, build_chains, reflect_file, reflect_tasks
from vau.parsing import answer_body, has_strict_format, strict_format
from vau.rewards import RewardSet
from vau.tasks import Sample, get_task
from vau.tasks.metrics import task_metrics
from vau.tasks.reflect import CHAIN_COLUMNS, CONFIRMING, CORRECTIVE, sample_chain

REFLECT_TAGS = ("think", "answer", "reflect", "think", "answer")
CHAIN = ("<think>first look</think><answer>B</answer>\n<reflect>the key object says otherwise</reflect>"
         "<think>revised</think><answer>C</answer>")


def test_strict_format_takes_repeated_tags_in_order():
    assert strict_format(CHAIN, REFLECT_TAGS) and has_strict_format(CHAIN, REFLECT_TAGS)
    assert not has_strict_format("<think>a</think><answer>B</answer>", REFLECT_TAGS)  # no reflection
    assert not has_strict_format(CHAIN + "<answer>D</answer>", REFLECT_TAGS)  # a third answer
    swapped = CHAIN.replace("<reflect>", "<think>", 1).replace("</reflect>", "</think>", 1)
    assert not has_strict_format(swapped, REFLECT_TAGS)


def test_strict_format_refuses_a_blank_first_block_of_a_repeated_tag():
    assert not has_strict_format(CHAIN.replace("first look", " "), REFLECT_TAGS)
    assert not has_strict_format(CHAIN.replace("<answer>B</answer>", "<answer> </answer>"), REFLECT_TAGS)


def test_the_last_answer_is_the_final_answer():
    assert answer_body(CHAIN) == "C"


# ------------------------------------------------------------------------------------------- reflect tasks ----
REFLECT = ("qa_reflect", "tag_reflect", "cls_reflect", "cls_binary_reflect")
OPTIONS = ("Nothing unusual happens", "A fire breaks out", "A fight starts", "Someone steals a bag")
QA_R = Sample(task="qa_reflect", video="q.mp4", question="What happens?", options=OPTIONS, answer="B",
              anomaly_class="Fire", description="Flames rise from a shop.", key_object="flames",
              reasoning="Flames rise, so a fire breaks out.")
TAG_R = Sample(task="tag_reflect", video="t.mp4", interval=(4.0, 8.0), anomaly_class="Fire")
TAG_R_NORMAL = Sample(task="tag_reflect", video="n.mp4", interval=(0.0, 0.0), anomaly_class="Normal")
CLS_R = Sample(task="cls_reflect", video="c.mp4", anomaly_class="Fire")
BIN_R = Sample(task="cls_binary_reflect", video="b.mp4", anomaly_class="Normal")


def reply(initial: str, final: str | None, reflect: str = "check") -> str:
    head = f"<think>first</think><answer>{initial}</answer>"
    return head if final is None else f"{head}<reflect>{reflect}</reflect><think>again</think><answer>{final}</answer>"


def test_every_scored_task_has_a_reflect_variant_in_the_registry():
    assert set(REFLECT) <= set(reflect_tasks())
    for name in REFLECT:
        task, base = get_task(name), get_task(name.removesuffix("_reflect"))
        assert task.format_tags == REFLECT_TAGS and task.answer_kind == base.answer_kind
        assert "<reflect>" in task.prompt(QA_R) and "<reflect>" not in base.prompt(QA_R)


def test_parse_initial_reads_the_answer_before_the_reflection():
    qa = get_task("qa_reflect")
    assert qa.parse_initial(reply("A", "B"), QA_R) == "A" and qa.parse(reply("A", "B"), QA_R) == "B"
    assert qa.parse_initial(reply("A", None), QA_R) is None  # no reflection: no initial answer
    assert qa.parse(reply("A", None), QA_R) == "A"  # ... but the reply still scores
    assert qa.parse_initial("<reflect>hm</reflect><answer>B</answer>", QA_R) is None  # nothing before it
    assert qa.parse_initial("<answer>A</answer><reflect>never closed<answer>B</answer>", QA_R) is None
    tag = get_task("tag_reflect")
    assert tag.parse_initial(reply("[1, 2]", "[4, 8]"), TAG_R) == (1.0, 2.0)
    assert tag.initial_accuracy(reply("[4, 6]", "[4, 8]"), TAG_R) == 0.5 and tag.is_correct(0.5)
    assert tag.initial_accuracy(reply("[4, 6]", None), TAG_R) is None
    assert get_task("cls_reflect").parse_initial(reply("Explosion", "Fire"), CLS_R) == "Explosion"
    assert get_task("cls_binary_reflect").parse_initial(reply("Anomaly", "Normal"), BIN_R) is True


@pytest.mark.parametrize("name, sample", [("qa_reflect", QA_R), ("tag_reflect", TAG_R), ("tag_reflect", TAG_R_NORMAL),
                                          ("cls_reflect", CLS_R), ("cls_binary_reflect", BIN_R)])
def test_without_a_chain_the_target_is_a_confirming_chain(name, sample):
    task = get_task(name)
    target = task.target(sample)
    assert has_strict_format(target, REFLECT_TAGS)
    assert task.parse(target, sample) == task.truth(sample) == task.parse_initial(target, sample)
    assert "keep" in target.split("<reflect>")[1]


def test_base_tasks_read_a_reflected_row_exactly_as_before(tmp_path):
    plain, reflected = tmp_path / "plain.csv", tmp_path / "reflected.csv"
    row = {c: "-1" for c in COLUMNS}
    row.update({"Video Name": "msad_Fire_1.mp4", "Question": "What?", "Option 1": "a", "Option 2": "b",
                "Option 3": "c", "Option 4": "d", "Correct Option": "B", "Anomaly Class": "Fire",
                "Start Time": "1.0", "End Time": "2.0", "Description": "Fire.", "Reasoning": "Smoke."})
    write_annotations(plain, [row])
    chain = {"Initial Reasoning": "r", "Initial Answer": "A", "Reflection": "no", "Revised Reasoning": "s",
             "Chain Kind": CORRECTIVE, "Chain Task": "qa_reflect"}
    write_annotations(reflected, [{**row, **chain}], columns=[*COLUMNS, *CHAIN_COLUMNS])
    (a,), (b,) = read_annotations(plain), read_annotations(reflected)
    assert a == b and repr(a) == repr(b) and a.extra == {} and b.extra["Chain Task"] == "qa_reflect"
    for name in ("qa", "tag", "cls", "cls_binary", "describe"):
        task = get_task(name)
        assert task.sample(a) == task.sample(b) and task.sample(b).extra == {}
        assert task.target(task.sample(a)) == task.target(task.sample(b))
    qa = get_task("qa_reflect")
    assert qa.parse_initial(qa.target(qa.sample(b)), qa.sample(b)) == "A"
    for other in ("tag_reflect", "cls_reflect"):  # the chain is qa_reflect's: the other reflect tasks skip the row
        assert not get_task(other).keeps(b, train=True) and not get_task(other).has_truth(b)
        assert get_task(other).keeps(a, train=True)


# ---------------------------------------------------------------------------------------- reflection data ----
def _check_reflected(source, out, counts, ratio=0.5):
    """Every kept row of each reflect task got one chain; the file reads back and its targets parse back."""
    rows, written = read_annotations(source), read_annotations(out)
    for name in REFLECT:
        task = get_task(name)
        kept = [a for a in rows if task.keeps(a, True) or task.keeps(a, False)]
        mine = [a for a in written if a.extra.get("Chain Task") == name]
        assert len(mine) == len(kept) == sum(counts[(name, k)] for k in (CORRECTIVE, CONFIRMING, "failed")) > 0
        assert counts[(name, "failed")] == 0
        assert abs(counts[(name, CORRECTIVE)] - ratio * len(kept)) <= 1 + 0.1 * len(kept)  # wrong answers can fail
        for ann in mine:
            sample = task.sample(ann)
            chain, target = sample_chain(sample), task.target(sample)
            assert chain is not None and chain.task == name and has_strict_format(target, REFLECT_TAGS)
            # the final answer is the truth (TAG: the base target's 0.1 s rounding of the annotated interval)
            assert task.is_correct(task.accuracy(target, sample)) and task.accuracy(target, sample) > 0.9
            initial = task.initial_accuracy(target, sample)
            assert task.parse_initial(target, sample) is not None
            if chain.kind == CORRECTIVE:
                assert not task.is_correct(initial) and task.parse_initial(target, sample) != task.truth(sample)
            else:
                assert task.is_correct(initial)


def _demo_csv(demo_root):
    return demo_root / "train.csv"


def test_data_reflect_cli_on_a_generated_csv(demo_root, tmp_path):
    out = tmp_path / "reflected.csv"
    args = [sys.executable, "-m", "vau", "data", "reflect", f"annotations={_demo_csv(demo_root)}", f"out={out}",
            "seed=3"]
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    for name in REFLECT:
        assert f"{name}: " in result.stdout and "corrective" in result.stdout and "failed" in result.stdout
    assert "total:" in result.stdout
    _, counts = build_chains(read_annotations(_demo_csv(demo_root)), seed=3)
    _check_reflected(_demo_csv(demo_root), out, counts)
    again = tmp_path / "again.csv"
    assert reflect_file(_demo_csv(demo_root), again, seed=3) == counts
    assert again.read_bytes() == out.read_bytes()  # deterministic from the seed
    reflect_file(out, tmp_path / "twice.csv", seed=3)  # a reflected file can be rebuilt: old chains are replaced
    assert read_annotations(tmp_path / "twice.csv")[0].extra.keys() == read_annotations(out)[0].extra.keys()


def test_data_reflect_ratio_and_bad_arguments(demo_root, tmp_path, capsys):
    from vau.datatools.reflection import main

    rows = read_annotations(_demo_csv(demo_root))
    _, only_confirming = build_chains(rows, ["qa_reflect"], corrective_ratio=0.0)
    assert only_confirming[("qa_reflect", CORRECTIVE)] == 0 and only_confirming[("qa_reflect", CONFIRMING)] > 0
    assert main([f"annotations={_demo_csv(demo_root)}"]) == 2
    assert main([f"annotations={_demo_csv(demo_root)}", f"out={tmp_path / 'x.csv'}", "builder=tempate"]) == 2
    assert "Did you mean 'template'" in capsys.readouterr().err
    assert main([f"annotations={_demo_csv(demo_root)}", f"out={tmp_path / 'x.csv'}", "tasks=qa"]) == 2
    assert main([f"annotations={_demo_csv(demo_root)}", f"out={tmp_path / 'x.csv'}", "corrective_ratio=2"]) == 2


@pytest.mark.skipif(not (SHARED / "val.csv").is_file(), reason="real VAU-Bench val.csv not present (shared data)")
def test_data_reflect_on_the_real_val_file(tmp_path):
    out = tmp_path / "val_reflected.csv"
    counts = reflect_file(SHARED / "val.csv", out, seed=0)
    _check_reflected(SHARED / "val.csv", out, counts)


def test_in_memory_chains_match_the_file(demo_root, tmp_path):
    rows = read_annotations(_demo_csv(demo_root))
    reflect_file(_demo_csv(demo_root), tmp_path / "r.csv", seed=1)
    from_file = read_annotations(tmp_path / "r.csv")
    in_memory = attach_chains(rows, ["qa_reflect", "tag_reflect"], seed=1)
    assert [a == b for a, b in zip(rows, in_memory)] == [True] * len(rows)
    for name in ("qa_reflect", "tag_reflect"):
        task = get_task(name)
        a = [task.target(task.sample(r)) for r in in_memory if task.keeps(r, True)]
        b = [task.target(task.sample(r)) for r in from_file if task.keeps(r, True)]
        assert a == b and len(a) > 0


# ------------------------------------------------------------------------------------------------ rewards ----
def _reward(name, texts, samples, **config):
    return RewardSet({name: {"weight": 1.0, **config}}).functions[name](texts, samples)


def test_self_correction_values():
    texts = [reply("A", "B"), reply("B", "A"), reply("B", "B"), reply("A", "C"), reply("A", None), "B"]
    assert _reward("self_correction", texts, [QA_R] * 6) == [1.0, -1.0, 0.0, 0.0, None, None]
    assert _reward("self_correction", texts[:2], [QA_R] * 2, gain=0.5, loss=0.25) == [0.5, -0.25]
    assert _reward("self_correction", texts[:2], [QA_R] * 2, gain=7, loss="x") == [1.0, -1.0]  # clipped / default
    qa = Sample(task="qa", video="q.mp4", options=OPTIONS, answer="B")
    # any task's reply that reflects (e.g. a two-pass one) has an initial answer; one that does not, none
    assert _reward("self_correction", [reply("A", "B"), "<answer>B</answer>"], [qa, qa]) == [1.0, None]
    tag = [reply("[0, 1]", "[4, 7]"), reply("[4, 7]", "[4, 5]"), reply("[1, 2]", "[0, 0]")]
    assert _reward("self_correction", tag, [TAG_R, TAG_R, TAG_R_NORMAL]) == [1.0, -1.0, 1.0]


def test_initial_accuracy_values():
    texts = [reply("A", "B"), reply("B", "A"), reply("B", None), "<answer>B</answer>"]
    assert _reward("initial_accuracy", texts, [QA_R] * 4) == [0.0, 1.0, None, None]
    tag = [reply("[4, 6]", "[4, 8]"), reply("[0, 1]", "[4, 8]")]
    assert _reward("initial_accuracy", tag, [TAG_R, TAG_R]) == [0.5, 0.0]


def test_iou_gain_values():
    texts = [reply("[4, 6]", "[4, 8]"), reply("[4, 8]", "[0, 1]"), reply("[4, 8]", None), reply("x", "[4, 8]")]
    assert _reward("iou_gain", texts, [TAG_R] * 4) == [0.5, -1.0, None, 1.0]
    assert _reward("iou_gain", [reply("A", "B")], [QA_R]) == [None]
    assert _reward("iou_gain", [reply("[1, 2]", "[0, 0]")], [TAG_R_NORMAL]) == [1.0]


def test_reflection_length_values():
    words = lambda n: " ".join(["w"] * n)  # noqa: E731
    texts = [reply("A", "B", words(10)), reply("A", "B", words(15)), reply("A", "B", words(30)), reply("A", None)]
    assert _reward("reflection_length", texts, [QA_R] * 4, budget=10, ramp=10) == [0.0, -0.5, -1.0, 0.0]
    qa = Sample(task="qa", video="q.mp4", options=OPTIONS, answer="B")
    assert _reward("reflection_length", texts[:1], [qa]) == [None]


FRAGMENTS = ["<think>", "</think>", "<answer>", "</answer>", "<reflect>", "</reflect>", "[", "]", ",", "4", "8.0",
             "-1", "0", "A", "B", "C", " or ", "Fire", "Explosion", "Normal", "Anomaly", " ", "\n", "\x00", "9" * 30]
any_text = st.one_of(st.text(max_size=120), st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join))
REWARD_RANGES = {"self_correction": (-1.0, 1.0), "iou_gain": (-1.0, 1.0), "reflection_length": (-1.0, 0.0),
                 "format": (0.0, 1.0), "accuracy": (0.0, 1.0)}
junk = st.one_of(st.none(), st.integers(-5, 10**6), st.floats(), st.text(max_size=3))


@pytest.mark.parametrize("name", sorted(REWARD_RANGES))
@settings(max_examples=80, deadline=None)
@given(texts=st.lists(any_text, min_size=1, max_size=4),
       picks=st.lists(st.sampled_from([QA_R, TAG_R, TAG_R_NORMAL, CLS_R, BIN_R]), min_size=4, max_size=4),
       first=junk, second=junk)
def test_reflect_rewards_stay_in_range_on_reflect_samples(name, texts, picks, first, second):
    config = {"self_correction": {"gain": first, "loss": second},
              "reflection_length": {"budget": first, "ramp": second}}.get(name, {})
    low, high = REWARD_RANGES[name]
    values = _reward(name, texts, picks[: len(texts)], **config)
    assert len(values) == len(texts)
    assert all(v is None or (isinstance(v, float) and math.isfinite(v) and low <= v <= high) for v in values)


# ------------------------------------------------------------------------------------------------ metrics ----
def test_reflect_metrics_count_initial_final_and_changes():
    metrics = task_metrics("qa_reflect")
    texts = [reply("A", "B"), reply("B", "A"), reply("B", "B"), reply("C", None), "<answer>B</answer>"]
    for metric in metrics.values():
        metric.update(texts, [QA_R] * len(texts))
    values = {k: float(m.compute()) for k, m in metrics.items()}
    assert values["qa_reflect_accuracy"] == pytest.approx(3 / 5)  # final answers: B, A, B, C, B
    assert values["qa_reflect_initial_accuracy"] == pytest.approx(3 / 5)  # A, B, B, then C and B (no reflection)
    assert values["qa_reflect_delta_i2c"] == pytest.approx(1 / 5)
    assert values["qa_reflect_delta_c2i"] == pytest.approx(1 / 5)
    assert values["qa_reflect_reflect_rate"] == pytest.approx(3 / 5)
    assert values["format_rate"] == pytest.approx(3 / 5)


def test_tag_reflect_metrics_use_iou_and_the_anomalous_clips():
    metrics = task_metrics("tag_reflect")
    texts = [reply("[4, 6]", "[4, 8]"), reply("[0, 1]", "[0, 0]")]
    for metric in metrics.values():
        metric.update(texts, [TAG_R, TAG_R_NORMAL])
    assert float(metrics["tag_reflect_miou"].compute()) == 1.0
    assert float(metrics["tag_reflect_initial_miou"].compute()) == 0.5  # normal clips are not in mIoU
    assert float(metrics["tag_reflect_delta_i2c"].compute()) == 0.5  # [0, 1] -> [0, 0] on the normal clip
    assert float(metrics["tag_reflect_false_alarm"].compute()) == 0.0


def test_score_reports_the_reflect_metrics_of_a_predictions_file(tmp_path, capsys):
    from vau.eval.score import main, scored_tasks

    assert set(REFLECT) <= set(scored_tasks())
    bench = tmp_path / "bench.csv"
    base = {c: "-1" for c in COLUMNS}
    base.update({"Question": "What happens?", "Option 1": "Nothing", "Option 2": "A fire", "Option 3": "A fight",
                 "Option 4": "A theft", "Anomaly Class": "Fire", "Start Time": "2", "End Time": "6",
                 "Description": "d", "Reasoning": "r"})
    write_annotations(bench, [{**base, "Video Name": "v1.mp4", "Correct Option": "B"},
                              {**base, "Video Name": "v2.mp4", "Correct Option": "C"}])
    preds = tmp_path / "predictions.jsonl"
    preds.write_text("\n".join(json.dumps({"video": v, "task": "qa_reflect", "response": r}) for v, r in [
        ("v1.mp4", reply("A", "B")), ("v2.mp4", reply("C", "B"))]) + "\n")
    out = tmp_path / "metrics.json"
    assert main([f"annotations={bench}", f"predictions={preds}", f"output={out}"]) == 0
    assert "QA_REFLECT" in capsys.readouterr().out
    metrics = json.loads(out.read_text())["tasks"]["qa_reflect"]["metrics"]
    assert metrics["qa_reflect_accuracy"] == {"value": 50.0, "n": 2}
    assert metrics["qa_reflect_initial_accuracy"]["value"] == 50.0
    assert metrics["qa_reflect_delta_i2c"]["value"] == 50.0 and metrics["qa_reflect_delta_c2i"]["value"] == 50.0
    assert metrics["qa_reflect_reflect_rate"]["value"] == 100.0


# ------------------------------------------------------------------------------------------------- fits ----
DEMO_REFLECT = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("demo_*reflect*.yaml"))


def test_every_reflect_task_has_demo_experiments():
    assert {"demo_sft_reflect_qa", "demo_grpo_reflect_qa", "demo_sft_reflect_tag", "demo_grpo_reflect_tag"} <= set(DEMO_REFLECT)


@pytest.mark.parametrize("conf", DEMO_REFLECT)
def test_demo_reflect_experiment_fits_two_steps(conf, overrides, tmp_path):
    """Every demo reflect experiment trains 2 steps (SFT on template chains; GRPO with the reflect rewards) and
    reports the reflection metrics of its task."""
    from tests.test_components import _scalars
    from vau.config import compose
    from vau.run import run

    run_dir = tmp_path / "run"
    extra = ["init_from=null"]  # a stage that starts from another's checkpoint starts from the tiny model here
    if "grpo" in conf:
        extra += ["module.grpo.max_new_tokens=8", "module.grpo.num_generations=2"]
    cfg = compose(conf, [*overrides, f"run_dir={run_dir}", *extra])
    task = cfg.data.task
    metrics = run("fit", cfg)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    score = get_task(task).score_name
    assert {f"test/{task}_{score}", f"test/{task}_initial_{score}", f"test/{task}_delta_i2c",
            f"test/{task}_delta_c2i", f"test/{task}_reflect_rate", "test/format_rate"} <= set(metrics)
    records = [json.loads(line) for line in (run_dir / "predictions_rank0.jsonl").read_text().splitlines()]
    assert records and {r["task"] for r in records} == {task}
    if "grpo" in conf:
        # self_correction / iou_gain / initial_accuracy are None for replies that do not reflect (8 tokens here): nothing to log
        for name in set(cfg.reward) - {"self_correction", "iou_gain", "initial_accuracy"}:
            assert len(_scalars(run_dir, f"train/reward/{name}")) == 2, name
    else:
        assert cfg.data.reflect.builder == "template"


def test_the_datamodule_builds_chains_when_data_reflect_asks(overrides, tiny_backbone):
    from vau.config import compose
    from vau.datamodules.vau_bench import VAUBenchDataModule

    cfg = compose("demo_sft_reflect_qa", overrides)
    dm = VAUBenchDataModule(cfg.data, cfg.sampler, tiny_backbone, tiny_backbone.pad_id)
    samples = dm._samples("train", str(cfg.data.annotations.train))
    kinds = {sample_chain(s).kind for s in samples}
    assert kinds == {CORRECTIVE, CONFIRMING}
    cfg = compose("demo_sft_reflect_qa", [*overrides, "data.reflect=null"])
    dm = VAUBenchDataModule(cfg.data, cfg.sampler, tiny_backbone, tiny_backbone.pad_id)
    assert all(sample_chain(s) is None for s in dm._samples("train", str(cfg.data.annotations.train)))


@pytest.mark.parametrize("name", reflect_tasks())
def test_every_reflect_task_makes_mistakes_that_score_wrong(name, demo_root):
    """``plausible_mistake`` is what corrective chains start from: read as a first answer, it must parse and score
    as wrong on every row it is made for, and the same seed must give the same mistake."""
    import random

    task = get_task(name)
    samples = [task.sample(r) for r in read_annotations(_demo_csv(demo_root)) if task.keeps(r, True)]
    made = 0
    for sample in samples:
        if task.truth(sample) is None:
            continue
        mistake = task.plausible_mistake(sample, random.Random(7))
        if mistake is None:
            continue
        answer, reasoning, rejection = mistake
        assert mistake == task.plausible_mistake(sample, random.Random(7))
        probe = f"<answer>{answer}</answer><reflect>x</reflect>"
        assert task.parse_initial(probe, sample) is not None, (name, answer)
        assert not task.is_correct(task.initial_accuracy(probe, sample)), (name, answer, task.truth(sample))
        assert reasoning and rejection
        made += 1
    assert made >= len(samples) // 2, f"{name}: a mistake for only {made} of {len(samples)} rows"
