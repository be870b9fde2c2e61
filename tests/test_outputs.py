"""Nothing lost: every command checks the paths it writes before any work (vau/outputs.py, docs/guarantees.md).

Each case is one a careless user hit: an output next to (or equal to) an input, an existing run folder, a report's
plot paths pointing outside its folder. Every refusal exits 2, names the key, and leaves the files as they were.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from vau.cli import main

OPTIONS = ("Nothing unusual happens", "A fire breaks out", "A fight breaks out", "A car crashes")


def _cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def ann(demo_root, tmp_path):
    folder = tmp_path / "ann"
    folder.mkdir()
    path = folder / "small.csv"
    shutil.copy(demo_root / "test.csv", path)
    return path


def test_predict_never_writes_over_its_input_or_a_foreign_file(ann, tmp_path, capsys):
    before = ann.read_bytes()
    # out=ann/small.jsonl: its CSV twin is ann/small.csv, the annotations
    code, _, err = _cli(capsys, "predict", f"annotations={ann}", "task=qa", f"out={ann.with_suffix('.jsonl')}")
    assert code == 2 and "CSV twin" in err and "annotations file" in err
    code, _, err = _cli(capsys, "predict", f"annotations={ann}", "task=qa", f"out={ann}")
    assert code == 2 and "JSON-lines" in err  # out=*.csv: the twin would be the out file itself
    code, _, err = _cli(capsys, "predict", f"annotations={ann}", "task=qa", f"out={tmp_path / 'res' / 'preds.csv'}")
    assert code == 2 and "out=" in err
    assert ann.read_bytes() == before
    foreign = tmp_path / "notes.jsonl"
    foreign.write_text("my own notes\n")
    code, _, err = _cli(capsys, "predict", f"annotations={ann}", "task=qa", f"out={foreign}")
    assert code == 2 and "overwrite=true" in err and foreign.read_text() == "my own notes\n"
    twin = tmp_path / "mine.csv"
    twin.write_text("a,b\n1,2\n")
    code, _, err = _cli(capsys, "predict", f"annotations={ann}", "task=qa", f"out={tmp_path / 'mine.jsonl'}")
    assert code == 2 and "CSV twin" in err and twin.read_text() == "a,b\n1,2\n"
    (tmp_path / "folder.jsonl").mkdir()
    code, _, err = _cli(capsys, "predict", f"annotations={ann}", "task=qa", f"out={tmp_path / 'folder.jsonl'}")
    assert code == 2 and "is a folder" in err
    code, _, err = _cli(capsys, "predict", f"annotations={ann}", "task=qa", f"out={foreign / 'sub' / 'p.jsonl'}")
    assert code == 2 and "cannot write into" in err and "not a folder" in err  # found before a model loads


@pytest.mark.parametrize("command", [["predict", "task=qa"], ["predict", "task=vad"], ["data", "difficulty"]])
@pytest.mark.parametrize("text", ["my notes, one line, no newline", '{"video": "a.mp4"}\nmore notes without newline'])
def test_resuming_commands_never_cut_the_last_line_of_a_file_they_did_not_write(ann, tmp_path, capsys, command,
                                                                                    text):
    """A file whose last line has no newline looks like a killed run's torn record; predict, predict task=vad and data
    difficulty cut such a line before appending, so they must recognise their own files first (a one-line note,
    or other records followed by text, is someone else's)."""
    foreign = tmp_path / "notes.jsonl"
    foreign.write_text(text)
    code, _, err = _cli(capsys, command[0], *command[1:], f"annotations={ann}", f"out={foreign}")
    assert code == 2 and "overwrite=true" in err
    assert foreign.read_text() == text


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: a read-only folder cannot be made here")
def test_predict_refuses_an_unwritable_out_before_loading_a_model(ann, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    code, _, err = _cli(capsys, "predict", f"annotations={ann}", "task=qa", f"out={locked / 'p.jsonl'}")
    assert code == 2 and "cannot write" in err


def test_score_and_report_never_write_over_their_inputs(ann, tmp_path, capsys):
    preds = tmp_path / "mine.jsonl"
    preds.write_text("".join(json.dumps({"video": row.split(",")[0], "task": "qa", "response": "<answer>A</answer>"})
                             + "\n" for row in ann.read_text().splitlines()[1:]))
    before = preds.read_bytes()
    code, _, err = _cli(capsys, "score", f"annotations={ann}", f"predictions={preds}", f"output={preds}")
    assert code == 2 and "predictions" in err and preds.read_bytes() == before
    code, _, err = _cli(capsys, "score", f"annotations={ann}", f"predictions={preds}", f"output={ann}")
    assert code == 2 and ann.read_text().startswith("Video Name")
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}\n')
    code, _, err = _cli(capsys, "score", f"annotations={ann}", f"predictions={preds}", f"output={notes}")
    assert code == 2 and "overwrite=true" in err and notes.read_text() == '{"mine": 1}\n'
    report = tmp_path / "report"
    assert _cli(capsys, "score", f"annotations={ann}", f"predictions={preds}", f"report={report}",
                f"output={tmp_path / 'm.json'}")[0] == 0
    # a second score into the same places replaces what score wrote there
    assert _cli(capsys, "score", f"annotations={ann}", f"predictions={preds}", f"report={report}",
                f"output={tmp_path / 'm.json'}")[0] == 0
    score_json = (report / "score.json").read_bytes()
    code, _, err = _cli(capsys, "report", f"score={report / 'score.json'}", f"out={report / 'score.json'}")
    assert code == 2 and "score file" in err and (report / "score.json").read_bytes() == score_json
    assert _cli(capsys, "report", f"score={report / 'score.json'}")[0] == 0  # its own report.html: replaced


def test_fit_refuses_an_existing_run_folder_unless_it_resumes_from_it(overrides, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["fit", *overrides, f"run_dir={run_dir}", "trainer.max_steps=1", "test_after_fit=false",
            "checkpoint.every_n_train_steps=1"]
    assert _cli(capsys, *args)[0] == 0
    config = (run_dir / "config.yaml").read_bytes()
    files = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    code, _, err = _cli(capsys, *args)
    assert code == 2 and "already holds a run" in err and "ckpt_path=" in err
    assert (run_dir / "config.yaml").read_bytes() == config
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == files  # no last-v1.ckpt, no new events
    code, _, err = _cli(capsys, "test", *overrides, f"run_dir={run_dir}")
    assert code == 2 and "already holds a run" in err
    # resuming from a checkpoint inside it is allowed
    resume = [*args[:-3], "trainer.max_steps=2", "test_after_fit=false", "checkpoint.every_n_train_steps=1",
              f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"]
    code, _, err = _cli(capsys, *resume)
    assert code == 0, err


def test_report_embeds_only_plots_inside_its_folder(tmp_path, capsys):
    from vau.eval.html_report import read_plot

    folder = tmp_path / "rep"
    folder.mkdir()
    (folder / "ok.png").write_bytes(b"\x89PNG fake")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"private")
    os.mkfifo(folder / "pipe.png")
    (folder / "link.png").symlink_to(secret)
    assert read_plot(folder, "ok.png") == (b"\x89PNG fake", "")
    for rel in (str(secret), "../secret.png", "link.png", "/dev/zero", "pipe.png", "/etc/passwd"):
        data, why = read_plot(folder, rel)
        assert data is None and why, rel  # returns at once: a FIFO is never opened
    score = {"tasks": {}, "plots": {"a": "../secret.png", "b": "pipe.png", "c": "/dev/zero"}, "clips": []}
    (folder / "score.json").write_text(json.dumps(score))
    assert _cli(capsys, "report", f"score={folder / 'score.json'}")[0] == 0
    page = (folder / "report.html").read_text()
    assert "cHJpdmF0ZQ" not in page  # base64 of "private"


def test_score_names_bad_prediction_files_instead_of_scoring_them(ann, tmp_path, capsys):
    video = ann.read_text().splitlines()[1].split(",")[0]
    cases = {
        "nan.jsonl": json.dumps({"video": video, "task": "qa", "response": "A"})[:-1] + ', "x": NaN}\n',
        "deep.jsonl": json.dumps({"video": video, "task": "qa", "response": "A"})[:-1]
        + ', "x": ' + "[" * 5000 + "]" * 5000 + "}\n",
        "big.csv": "Video Name,QA answer\n" + f'{video},"{"A" * 200_000}"\n',
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        code, _, err = _cli(capsys, "score", f"annotations={ann}", f"predictions={tmp_path / name}")
        assert code == 2 and str(tmp_path / name) in err and "Traceback" not in err, (name, err)
    assert "NaN" in _cli(capsys, "score", f"annotations={ann}", f"predictions={tmp_path / 'nan.jsonl'}")[2]
    # the annotations themselves given as predictions: not a 100% score
    code, _, err = _cli(capsys, "score", f"annotations={ann}", f"predictions={ann}")
    assert code == 2 and "annotation file" in err


def test_every_checkpoint_load_names_the_file_and_the_reason(overrides, ann, tmp_path, capsys):
    import torch

    run_dir = tmp_path / "run"
    assert _cli(capsys, "fit", *overrides, f"run_dir={run_dir}", "trainer.max_steps=1", "test_after_fit=false")[0] == 0
    good = run_dir / "checkpoints" / "last.ckpt"
    truncated, text, other = tmp_path / "cut.ckpt", tmp_path / "text.ckpt", tmp_path / "other.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text.write_text("not a checkpoint\n")
    state = torch.load(good, map_location="cpu", weights_only=True)
    name = next(k for k in state["state_dict"] if k.endswith("embed_tokens.weight"))
    state["state_dict"][name] = torch.zeros(7, 3)  # a weight of another backbone's shape
    torch.save(state, other)
    reasons = {truncated: "not a readable checkpoint", text: "not a readable checkpoint",
               other: "does not hold weights of this backbone"}
    for path, reason in reasons.items():
        for stage, key in (("fit", "ckpt_path"), ("fit", "init_from"), ("test", "ckpt_path")):
            code, _, err = _cli(capsys, stage, *overrides, f"{key}={path}", f"run_dir={tmp_path / 'x' / stage}",
                                "trainer.max_steps=1")
            assert code == 2 and f"{key}={path}" in err and reason in err, (stage, key, err)
            assert "Traceback" not in err
        code, _, err = _cli(capsys, "predict", f"ckpt={path}", f"annotations={ann}", "task=qa",
                            f"out={tmp_path / 'p.jsonl'}")
        assert code == 2 and f"ckpt={path}" in err, err


def test_predict_resumes_only_what_the_same_model_and_settings_started(overrides, ann, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    args = ["predict", "conf=demo", *overrides, f"annotations={ann}", "task=qa", f"out={out}",
            "trainer.enable_progress_bar=false", "module.generation.max_new_tokens=6"]
    code, _, err = _cli(capsys, *args)
    assert code == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and all(r["run"] == records[0]["run"] for r in records)
    assert {"model", "weights", "settings"} <= set(records[0]["run"])
    code, printed, err = _cli(capsys, *args)
    assert code == 0 and f"0 predicted, {len(records)} already" in printed, err
    before = out.read_bytes()
    code, _, err = _cli(capsys, *args[:-1], "module.generation.max_new_tokens=7")
    assert code == 2 and "another generation settings" in err and out.read_bytes() == before
    code, _, err = _cli(capsys, *args, "backbone.seed=1")  # other weights
    assert code == 2 and "another model" in err and out.read_bytes() == before
    old = tmp_path / "old.jsonl"
    old.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "run"}) + "\n" for r in records))
    code, _, err = _cli(capsys, *[a if not a.startswith("out=") else f"out={old}" for a in args])
    assert code == 2 and "without the model" in err


def test_score_says_when_a_video_has_several_annotation_rows(ann, tmp_path, capsys):
    lines = ann.read_text().splitlines(keepends=True)
    dup = tmp_path / "dup.csv"
    dup.write_text("".join([*lines, lines[1]]))
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"video": lines[1].split(",")[0], "task": "qa", "response": "<answer>A</answer>"}) + "\n")
    code, _, err = _cli(capsys, "score", f"annotations={dup}", f"predictions={preds}")
    assert code == 0 and "1 video name(s) on more than one row" in err and lines[1].split(",")[0] in err


def test_written_json_is_valid_even_when_a_metric_is_not_a_number(tmp_path):
    from vau.eval.html_report import _script_json
    from vau.eval.score import json_safe

    report = {"tasks": {"tag": {"overall": {"miou": float("nan")}}}, "clips": [{"iou": float("inf")}]}
    text = json.dumps(json_safe(report), allow_nan=False)
    assert json.loads(text)["tasks"]["tag"]["overall"]["miou"] is None
    embedded = _script_json(report)
    assert "NaN" not in embedded and "Infinity" not in embedded and json.loads(embedded)["clips"] == [{"iou": None}]


def test_an_unexpected_error_is_one_line_unless_vau_debug(tmp_path):
    import subprocess
    import sys

    (tmp_path / "boomplug.py").write_text('raise RuntimeError("boom at import")\n')  # a plugin that breaks
    run = [sys.executable, "-m", "vau", "list", "plugins=[boomplug]"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    quiet = subprocess.run(run, capture_output=True, text=True, timeout=120, env={**env, "VAU_DEBUG": ""})
    loud = subprocess.run(run, capture_output=True, text=True, timeout=120, env={**env, "VAU_DEBUG": "1"})
    assert "boom at import" in quiet.stderr
    assert quiet.returncode != 0 and "Traceback" not in quiet.stderr and "VAU_DEBUG=1" in quiet.stderr
    assert loud.returncode != 0 and "Traceback" in loud.stderr
