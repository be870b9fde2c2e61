"""Annotation formats (``READERS``, ``data.format``): every registered reader, and a new format added from outside
vau/ as one plugin file plus one experiment YAML, read by the data module, ``data stats`` and ``score``."""

from __future__ import annotations

import json
import textwrap

import pytest

from vau.data import AnnotationError, read_rows
from vau.data.annotations import read_annotations
from vau.registry import READERS, RegistryError

TOY_READER = textwrap.dedent('''
    """A user's annotation format: one JSON object per line."""
    import json

    from vau.data import Annotation
    from vau.registry import READERS


    @READERS.register("toy_jsonl")
    def toy_jsonl(path):
        "One JSON object per line: video, question, options, answer."
        rows = []
        with open(path) as f:
            for line_no, line in enumerate(f, start=1):
                r = json.loads(line)
                rows.append(Annotation(video=r["video"], question=r["question"], options=tuple(r["options"]),
                                       answer=r["answer"], anomaly_class=r["class"], row=line_no))
        return rows
''')


@pytest.fixture
def scoped_readers():
    with READERS.temporary():
        yield


@pytest.mark.parametrize("name", READERS.names())
def test_every_reader_names_a_missing_file(tmp_path, name):
    with pytest.raises(AnnotationError, match="missing.csv"):
        read_rows(tmp_path / "missing.csv", name)


def test_the_default_format_is_the_vau_bench_csv(demo_root):
    assert read_rows(demo_root / "test.csv") == read_annotations(demo_root / "test.csv")


def test_an_unknown_format_lists_the_known_ones():
    with pytest.raises(RegistryError, match="unknown annotation format 'csv2'.*vau_bench"):
        read_rows("x.csv", "csv2")


def test_score_names_an_unknown_format_with_exit_code_2(demo_root, tmp_path, capsys):
    from vau.cli import main as cli_main

    predictions = tmp_path / "p.jsonl"
    predictions.write_text('{"video": "x.mp4", "task": "qa", "response": "A"}\n')
    code = cli_main(["score", f"annotations={demo_root / 'test.csv'}", f"predictions={predictions}", "format=csv2"])
    assert code == 2  # a user's mistake, not an unexpected fault (exit 1)
    assert "unknown annotation format 'csv2'" in capsys.readouterr().err


def test_a_reader_that_returns_no_annotations_is_named(scoped_readers, tmp_path):
    READERS.register("broken")(lambda path: [{"video": "a.mp4"}])
    with pytest.raises(AnnotationError, match="'broken' annotation reader returned list, not a list of"):
        read_rows(tmp_path / "a.json", "broken")


def _toy_files(tmp_path, demo_root):
    """The demo's test rows rewritten in the toy JSON-lines format (same videos)."""
    rows = read_annotations(demo_root / "test.csv")
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps({"video": r.video, "question": r.question, "options": list(r.options),
                                        "answer": r.answer, "class": r.anomaly_class}) + "\n"
                            for r in rows if r.has_question))
    return path, rows


def test_a_plugin_format_is_one_file_and_one_yaml(scoped_readers, tmp_path, demo_root, overrides, tiny_backbone,
                                                   monkeypatch, capsys):
    """The data module, `data stats` and `score` read a format defined outside vau/ the same way."""
    from vau.cli import main as cli_main
    from vau.config import compose
    from vau.datamodules.vau_bench import VAUBenchDataModule

    (tmp_path / "toy_reader.py").write_text(TOY_READER)
    monkeypatch.syspath_prepend(str(tmp_path))
    data, rows = _toy_files(tmp_path, demo_root)
    experiment = tmp_path / "toy.yaml"
    experiment.write_text(textwrap.dedent(f"""\
        # @package _global_
        defaults:
          - demo
          - _self_
        plugins: [toy_reader]
        data:
          format: toy_jsonl
          annotations: {{train: {data}, val: {data}, test: {data}}}
    """))

    cfg = compose(str(experiment), overrides)
    assert cfg.data.format == "toy_jsonl"
    from vau.registry import load_plugins

    load_plugins(cfg.plugins, use_entry_points=False)
    dm = VAUBenchDataModule(cfg.data, cfg.sampler, tiny_backbone, tiny_backbone.pad_id, seed=0)
    dm.setup("test")
    questions = [r for r in rows if r.has_question]
    unshifted = [s for s in dm.datasets["test"].samples if not s.extra.get("shift")]  # demo: asked under 4 shifts
    assert [s.video for s in unshifted] == [r.video for r in questions]
    assert {s.answer for s in dm.datasets["test"].samples} <= set("ABCD")

    capsys.readouterr()
    assert cli_main(["data", "stats", f"conf={experiment}", *overrides]) == 0
    assert f"{len(questions)}" in capsys.readouterr().out

    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"video": r.video, "task": "qa",
                                               "response": f"<think>x</think><answer>{r.answer}</answer>"}) + "\n"
                                   for r in questions))
    code = cli_main(["score", f"annotations={data}", f"predictions={predictions}", "format=toy_jsonl",
                     "plugins=toy_reader", "task=qa"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"| Overall | 100.00 | 100.00 | {len(questions)} |" in out  # the QA table, every toy row scored
