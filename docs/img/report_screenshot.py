"""Re-make docs/img/report.png: an HTML report of generated demo clips, photographed by headless Chromium.

The clips and their annotations are the demo mini-benchmark's (vau.data.synthetic). The replies are
simulated (about three in four right, the rest plausibly wrong) so the page shows both kinds; the metric tables
are computed from those simulated clips. Needs Chromium, chromedriver and selenium (see docs/report.md).

    python docs/img/report_screenshot.py [WORK_DIR]      # writes docs/img/report.png; the page stays in WORK_DIR
"""

from __future__ import annotations

import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from vau.data.annotations import LETTERS, read_annotations
from vau.data.synthetic import KINDS, generate
from vau.datamodules.decoders import open_video
from vau.eval.html_report import write_html_report

OUT = Path(__file__).resolve().parent / "report.png"
CLASSES = [k.anomaly_class for k in KINDS]


def iou(a, b) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def simulated_clips(root: Path, rng: np.random.Generator) -> list[dict]:
    clips = []
    for i, ann in enumerate(read_annotations(root / "test.csv")):
        path = root / "videos" / ann.video
        video = open_video(path)
        duration = video.total / video.fps
        times = [round(float(t), 2) for t in np.linspace(0, video.total - 1, 16).round() / video.fps]
        common = {"video": ann.video, "source": ("msad", "ucf")[i % 2], "anomaly_class": ann.anomaly_class,
                  "frame_times": times, "video_path": str(path), "duration": duration}
        truth_letter = ann.answer
        letter = truth_letter if rng.random() < 0.75 else LETTERS[int(rng.integers(4))]
        option = ann.options[LETTERS.index(letter)]
        clips.append({**common, "task": "qa", "prediction": letter, "truth": truth_letter,
                      "correct": letter == truth_letter, "score": float(letter == truth_letter),
                      "response": f"<think>The clip shows a grey dot; {option.lower()}.</think>\n<answer>{letter}</answer>"})
        if ann.interval and ann.interval[1] > 0:
            s, e = ann.interval
            jitter = rng.normal(0, 0.25 * (e - s), 2) if rng.random() < 0.7 else rng.uniform(-e, duration - s, 2)
            ps, pe = sorted(np.clip([s + jitter[0], e + jitter[1]], 0, duration).round(1).tolist())
            score = iou((ps, pe), (s, e))
            clips.append({**common, "task": "tag", "prediction": f"[{ps:.1f}, {pe:.1f}]", "truth": f"[{s:.1f}, {e:.1f}]",
                          "score": round(score, 3), "correct": score >= 0.5, "pred_interval": [ps, pe],
                          "true_interval": [s, e],
                          "response": f"<think>The square is visible from about {ps:.1f} s to {pe:.1f} s.</think>\n"
                                      f"<answer>[{ps:.1f}, {pe:.1f}]</answer>"})
        guess = ann.anomaly_class if rng.random() < 0.7 else CLASSES[int(rng.integers(len(CLASSES)))]
        clips.append({**common, "task": "cls", "prediction": guess, "truth": ann.anomaly_class,
                      "correct": guess == ann.anomaly_class, "score": float(guess == ann.anomaly_class),
                      "response": f"<think>Colour and motion suggest {guess}.</think>\n<answer>{guess}</answer>"})
    missing = dict(clips[0], video="MSAD_gone_001.mp4", video_path=str(root / "videos" / "MSAD_gone_001.mp4"))
    return clips + [missing]


def table(task: str, clips: list[dict]) -> dict:
    if task == "tag":
        scores = [c["score"] for c in clips]
        return {"miou": float(np.mean(scores)), "r30": float(np.mean([s >= 0.3 for s in scores])),
                "r50": float(np.mean([s >= 0.5 for s in scores])), "r70": float(np.mean([s >= 0.7 for s in scores])),
                "n": len(clips)}
    return {"accuracy": float(np.mean([c["correct"] for c in clips])), "n": len(clips)}


def metrics(clips: list[dict]) -> dict:
    tasks: dict = {}
    for task in ("qa", "tag", "cls"):
        rows = [c for c in clips if c["task"] == task]
        groups = defaultdict(list)
        for c in rows:
            groups[c["source"]].append(c)
        tasks[task] = {"overall": table(task, rows),
                       "by_source": {s: table(task, cs) for s, cs in sorted(groups.items())}}
    return tasks


def plots(clips: list[dict], folder: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cls = [c for c in clips if c["task"] == "cls"]
    matrix = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
    for c in cls:
        matrix[CLASSES.index(c["truth"]), CLASSES.index(c["prediction"])] += 1
    fig, ax = plt.subplots(figsize=(3.6, 3.0), dpi=80)
    ax.imshow(matrix, cmap="Blues")
    short = [c.replace("Traffic_accident", "Accident") for c in CLASSES]
    ax.set_xticks(range(len(CLASSES)), short, rotation=30, fontsize=8)
    ax.set_yticks(range(len(CLASSES)), short, fontsize=8)
    for (r, k), v in np.ndenumerate(matrix):
        ax.text(k, r, str(v), ha="center", va="center", fontsize=8, color="white" if v > matrix.max() / 2 else "black")
    ax.set_xlabel("prediction", fontsize=8)
    ax.set_ylabel("truth", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "confusion_cls.png")
    fig, ax = plt.subplots(figsize=(3.6, 3.0), dpi=80)
    ax.hist([c["score"] for c in clips if c["task"] == "tag"], bins=np.linspace(0, 1, 11), color="#3b6fd8")
    ax.set_xlabel("temporal IoU", fontsize=8)
    ax.set_ylabel("clips", fontsize=8)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(folder / "iou_hist_tag.png")
    plt.close("all")
    return {"confusion": "confusion_cls.png", "iou_histogram": "iou_hist_tag.png"}


def screenshot(page: Path, out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as profile:
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={profile}", "--window-size=1280,900", "--hide-scrollbars"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            # the page's viewport itself 1280x900 (window-size counts the window, not the page)
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
            driver.get(page.as_uri())
            # the grounding clips: thumbnails with the anomaly and both intervals on the timeline
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support.ui import Select

            Select(driver.find_element(By.ID, "f-task")).select_by_value("tag")
            driver.save_screenshot(str(out))
        finally:
            driver.quit()


def main() -> None:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="vau-report-"))
    root = generate(work / "demo", n_train=4, n_val=4, n_test=16, seed=3)
    rng = np.random.default_rng(0)
    clips = simulated_clips(root, rng)
    qa = [c for c in clips if c["task"] == "qa"]
    raw = float(np.mean([c["correct"] for c in qa]))
    score = {"annotations": str(root / "test.csv"), "predictions": [str(work / "predictions_rank0.jsonl")],
             "tasks": metrics(clips),
             "qa_position": {"raw": raw, "circular": round(raw * 0.8, 4), "shifts": [0, 1, 2, 3], "n": len(qa),
                             "constant": {L: float(np.mean([c["truth"] == L for c in qa])) for L in LETTERS}},
             "plots": plots(clips, work), "clips": clips}
    page = write_html_report(score, work / "report.html")
    screenshot(page, OUT)
    print(f"{page} -> {OUT} ({OUT.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
