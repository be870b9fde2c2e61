"""The HTML report of a score: one self-contained file, real thumbnails of real mp4s, filters that work in a real
(headless) Chromium, and replies shown as text, never run."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from vau.eval import html_report
from vau.eval.html_report import ReportError, write_html_report

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FPS, SECONDS, W, H = 10, 4, 96, 64
SCRIPT = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def write_clip(path: Path, color: tuple[int, int, int]) -> Path:
    """A 4 s clip: a coloured square (rows 20-39) moving right over a background whose brightness is 5 * the
    frame index, so a thumbnail's brightness tells which frame it shows."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(FPS * SECONDS):
            frame = np.full((H, W, 3), 5 * i, dtype=np.uint8)
            x = 2 * i
            frame[20:40, x:x + 16] = color
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = i
            for packet in stream.encode(picture):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def clip(video, task, source, cls, correct, path, **extra):
    times = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    record = {"video": video, "task": task, "source": source, "anomaly_class": cls, "response": f"<answer>{video}",
              "prediction": "B", "truth": "B" if correct else "C", "score": 1.0 if correct else 0.0,
              "correct": correct, "pred_interval": None, "true_interval": None, "frame_times": times,
              "video_path": str(path), "duration": None}
    record.update(extra)
    return record


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    """Four real clips, a real PNG plot, and a score dict shaped like contract (2) with seven clips."""
    from PIL import Image

    root = tmp_path_factory.mktemp("report")
    videos = {name: write_clip(root / f"{name}.mp4", color) for name, color in
              [("fire", (230, 40, 30)), ("fight", (40, 210, 60)), ("crash", (40, 80, 240)), ("calm", (200, 200, 200))]}
    Image.new("RGB", (120, 80), (90, 120, 200)).save(root / "confusion_cls.png")
    clips = [
        clip("fire.mp4", "qa", "msad", "Fire", True, videos["fire"]),
        clip("fight.mp4", "qa", "ucf", "Fighting", False, videos["fight"], response=SCRIPT, truth="</script>C"),
        clip("fire.mp4", "tag", "msad", "Fire", True, videos["fire"], prediction="[1.0, 3.0]", score=0.75,
             truth="[1.5, 3.0]", pred_interval=[1.0, 3.0], true_interval=[1.5, 3.0], looks=[[0.5, 1.5]],
             look_times=[0.625, 0.875, 1.125, 1.375], initial="[0.0, 1.0]"),  # looked again (look_again)
        clip("crash.mp4", "tag", "ucf", "Traffic_accident", False, videos["crash"], prediction="[0.0, 0.4]",
             score=0.0, pred_interval=[0.0, 0.4], true_interval=[2.0, 4.0]),
        clip("crash.mp4", "cls", "ucf", "Traffic_accident", True, videos["crash"], prediction="Traffic_accident"),
        clip("calm.mp4", "cls", "msad", "Normal", True, videos["calm"], prediction="Normal"),
        clip("gone.mp4", "cls", "msad", "Fire", False, root / "gone.mp4", prediction="Normal"),
    ]
    score = {
        "annotations": "ann<i>x</i>.csv", "predictions": [str(root / "predictions_rank0.jsonl")],
        "tasks": {"qa": {"overall": {"accuracy": 0.5, "n": 2},
                         "by_source": {"msad": {"accuracy": 1.0, "n": 1}, "ucf": {"accuracy": 0.0, "n": 1}}},
                  "tag": {"overall": {"miou": 0.375, "r50": 0.5, "n": 2}, "by_source": {"ucf": {"miou": 0.0, "n": 1}}}},
        "qa_position": {"raw": 0.5, "circular": 0.25, "shifts": [0, 1, 2, 3], "n": 2,
                        "constant": {"A": 0.25, "B": 0.5, "C": 0.125, "D": 0.125}},
        "plots": {"confusion": "confusion_cls.png", "iou_histogram": "iou_hist_tag.png"},  # the second is missing
        "clips": clips,
    }
    (root / "score.json").write_text(json.dumps(score))
    return root


@pytest.fixture(scope="module")
def page(fixture_dir):
    score = json.loads((fixture_dir / "score.json").read_text())
    path = write_html_report(score, fixture_dir / "report.html")
    return path, score


def page_data(text: str, element: str):
    match = re.search(rf'<script type="application/json" id="{element}">(.*?)</script>', text, re.DOTALL)
    return json.loads(match.group(1))


# ------------------------------------------------------------------------------------------ file checks ----
def test_page_is_one_self_contained_file(page):
    path, score = page
    text = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|@import|url\(\s*["']?https?:""", text)
    assert "<link" not in text
    png = base64.b64encode((path.parent / "confusion_cls.png").read_bytes()).decode()
    assert f"data:image/png;base64,{png}" in text
    assert "iou_hist_tag.png not found" in text  # a missing plot is a note, not a crash
    assert "1 without thumbnails (1: video file missing)" in text
    assert "ann&lt;i&gt;x&lt;/i&gt;.csv" in text


def test_metric_tables_show_overall_source_and_position_rows(page):
    text = page[0].read_text()
    metrics = text.split('id="metrics"')[1].split("</section>")[0]
    assert re.search(r"<td>overall</td><td>50\.00</td><td>2</td>", metrics)
    assert re.search(r"<td>source: UCF-Crime</td><td>0\.00</td><td>1</td>", metrics)
    # tag: miou/r50 columns; the ucf row has no r50 -> a dash, not a crash
    assert re.search(r"<td>source: UCF-Crime</td><td>0\.00</td><td>–</td><td>1</td>", metrics)
    assert "<th>always B</th>" in metrics and "<td>25.00</td>" in metrics  # circular


def test_percent_score_files_are_not_scaled_twice(tmp_path):
    score = {"tasks": {"qa": {"overall": {"accuracy": 81.25, "n": 240}}}}
    text = write_html_report(score, tmp_path / "r.html").read_text()
    assert "<td>81.25</td>" in text and "8125" not in text


def test_replies_reach_the_page_only_as_escaped_data(page):
    path, score = page
    text = path.read_text()
    assert SCRIPT not in text and "<script>window" not in text and "<img src=x" not in text
    assert text.count("</script>") == 3  # the two data blocks and the page script: no reply closes one
    records = page_data(text, "clip-data")
    assert [r["response"] for r in records] == [c["response"] for c in score["clips"]]
    assert records[1]["truth"] == "</script>C"


def test_thumbnails_show_the_frames_at_frame_times(page):
    path, score = page
    records, thumbs = page_data(path.read_text(), "clip-data"), page_data(path.read_text(), "thumb-data")
    from PIL import Image

    first = records[0]
    assert first["thumb_times"] == score["clips"][0]["frame_times"]
    for t, b64 in zip(first["thumb_times"], thumbs[first["thumbs"]]):
        image = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))
        assert image.shape[1] == html_report.THUMB_WIDTH
        # The top rows are background only, and its brightness is 5 * the frame's index.
        assert abs(float(image[:12].mean()) - 5 * round(t * FPS)) < 6, t
    # same video and times -> decoded and stored once
    assert records[0]["thumbs"] == records[2]["thumbs"] and len(thumbs) == 4
    assert records[-1]["thumbs"] is None and records[-1]["why"] == "video file missing"
    assert records[2]["duration"] == pytest.approx(SECONDS)  # from the video when the clip names none


def test_thumbnail_budget_gives_each_video_fewer_frames(fixture_dir, monkeypatch):
    monkeypatch.setattr(html_report, "MAX_THUMBNAILS", 9)  # 5 video paths -> 1 each
    score = json.loads((fixture_dir / "score.json").read_text())
    text = write_html_report(score, fixture_dir / "budget.html", thumbs=8).read_text()
    assert {len(v) for v in page_data(text, "thumb-data").values()} == {1}


def test_malformed_clip_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match=r"score\['clips'\]\[1\] must be an object with a 'video'"):
        write_html_report({"clips": [{"video": "a.mp4"}, {"task": "qa"}]}, tmp_path / "r.html")


def test_cli_rerenders_from_score_json(fixture_dir, tmp_path, capsys):
    from vau.cli import main

    out = tmp_path / "again.html"
    assert main(["report", f"score={fixture_dir / 'score.json'}", f"out={out}", "thumbs=2"]) == 0
    assert f"report written to {out}" in capsys.readouterr().out
    text = out.read_text()
    assert "data:image/png;base64," in text  # plots found next to score.json, not next to out
    assert {len(v) for v in page_data(text, "thumb-data").values()} == {2}
    assert main(["report", f"score={tmp_path / 'nope.json'}"]) == 2
    assert "nope.json" in capsys.readouterr().err
    assert main(["report", f"score={fixture_dir}", "thumbs=x"]) == 2
    assert "thumbs='x' is not a whole number" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- browser checks ----
@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if missing:
        why = (f"headless browser test needs {', '.join(missing)}: "
               f"apt-get update && apt-get install -y chromium chromium-driver")
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test; {why}")
        pytest.skip(why)
    profile = tempfile.mkdtemp(prefix="vau-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Without the networking flags Chromium hangs on a machine with no outside network.
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def visible_rows(driver):
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#list .clip')).map(r => "
        "({source: r.dataset.source, task: r.dataset.task, correct: r.dataset.correct === '1'}))")


def test_page_renders_and_filters_in_chromium(browser, page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    path, score = page
    browser.get(path.as_uri())
    clips = score["clips"]
    assert len(visible_rows(browser)) == len(clips)
    count = browser.find_element(By.ID, "count")
    assert count.text == f"{len(clips)} of {len(clips)} clips"

    # every thumbnail is an image that loaded; the missing video is one placeholder
    WebDriverWait(browser, 20).until(lambda d: d.execute_script(
        "return Array.from(document.images).every(i => i.complete)"))
    widths = browser.execute_script("return Array.from(document.querySelectorAll('img.thumb')).map(i => i.naturalWidth)")
    assert len(widths) == 8 * (len(clips) - 1) and all(w == html_report.THUMB_WIDTH for w in widths)
    placeholders = browser.find_elements(By.CSS_SELECTOR, "#list .placeholder")
    assert [p.text for p in placeholders] == ["video file missing"]

    # the reply with markup in it is text on the page, and nothing of it ran
    replies = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#list pre.reply")]
    assert SCRIPT in replies
    assert browser.execute_script("return window.__pwned === undefined")
    assert browser.find_element(By.CSS_SELECTOR, "header dd").text == "ann<i>x</i>.csv"

    # the tag clip's timeline: predicted [1, 3] and annotated [1.5, 3] of 4 s
    segs = browser.execute_script(
        "const r = document.querySelectorAll('#list .clip')[2]; const bar = r.querySelector('.timeline');"
        "return Array.from(r.querySelectorAll('.seg')).map(s => [s.className, "
        "(s.getBoundingClientRect().left - bar.getBoundingClientRect().left) / bar.clientWidth, "
        "s.getBoundingClientRect().width / bar.clientWidth])")
    assert [s[0] for s in segs] == ["seg pred", "seg true", "seg look"]
    assert segs[0][1:] == pytest.approx([0.25, 0.5], abs=0.01)
    assert segs[1][1:] == pytest.approx([0.375, 0.375], abs=0.01)
    assert segs[2][1:] == pytest.approx([0.125, 0.25], abs=0.01)  # the window it looked at again, [0.5, 1.5] s
    looked = browser.execute_script("return document.querySelectorAll('#list .clip')[2].querySelectorAll("
                                    "'.tick.look').length")
    assert looked == 4
    answers = browser.find_elements(By.CSS_SELECTOR, "#list .clip")[2].find_element(By.CSS_SELECTOR, ".answers").text
    assert "first answer[0.0, 1.0]" in answers.replace("\n", "")

    browser.find_element(By.ID, "f-wrong").click()
    wrong = [c for c in clips if not c["correct"]]
    rows = visible_rows(browser)
    assert len(rows) == len(wrong) and not any(r["correct"] for r in rows)
    assert count.text == f"{len(wrong)} of {len(clips)} clips"

    browser.find_element(By.ID, "f-wrong").click()
    Select(browser.find_element(By.ID, "f-source")).select_by_value("ucf")
    rows = visible_rows(browser)
    assert {r["source"] for r in rows} == {"ucf"} and len(rows) == sum(c["source"] == "ucf" for c in clips)
    assert count.text == f"{len(rows)} of {len(clips)} clips"

    Select(browser.find_element(By.ID, "f-task")).select_by_value("tag")  # filters combine
    assert visible_rows(browser) == [{"source": "ucf", "task": "tag", "correct": False}]
    assert count.text == f"1 of {len(clips)} clips"


def test_long_clip_lists_are_paged(browser, fixture_dir, tmp_path):
    from selenium.webdriver.common.by import By

    score = json.loads((fixture_dir / "score.json").read_text())
    base = score["clips"][0]
    score["clips"] = [dict(base, video=f"v{i}.mp4", correct=i % 3 == 0) for i in range(120)]
    path = write_html_report(score, tmp_path / "many.html", plot_dir=fixture_dir, thumbs=1)
    browser.get(path.as_uri())
    assert len(visible_rows(browser)) == 50
    assert browser.find_element(By.ID, "page").text == "page 1 of 3"
    browser.find_element(By.ID, "next").click()
    browser.find_element(By.ID, "next").click()
    assert len(visible_rows(browser)) == 20 and browser.find_element(By.ID, "next").get_attribute("disabled")
    browser.find_element(By.ID, "f-wrong").click()  # a new filter starts again at page 1
    assert browser.find_element(By.ID, "page").text == "page 1 of 2"
    assert browser.find_element(By.ID, "count").text == "80 of 120 clips"
