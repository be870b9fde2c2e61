"""Sliding-window frame scoring (``python -m vau predict task=vad``) on one long video: time split into decoding and
model, frames decoded against frames in the file, peak memory.

The video is written here (real H.264, a grey dot drifting over noise, a red square for one minute in the middle),
then scored in a child process (its peak RSS is the run's alone) with the tiny demo model: a trained checkpoint
(``--ckpt``, e.g. a ``demo data.task=cls_binary`` run) answers in a few tokens; without one the untrained twin
writes all ``--max-new-tokens`` of every reply, the worst case for model time.

Usage:
    python benchmarks/vad_long_video.py                                  # 10 minutes, 25 fps, 4 s windows every 2 s
    python benchmarks/vad_long_video.py --ckpt outputs/demo/<run>/checkpoints/last.ckpt --minutes 10
    python benchmarks/vad_long_video.py --window 1 --stride 0.25 --frames 4
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_long_video(path: Path, minutes: float, fps: int, size=(128, 96)) -> int:
    import av

    width, height = size
    total = int(minutes * 60 * fps)
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 40, (height, width, 3), dtype=np.uint8) for _ in range(16)]
    event = (total // 2 - 30 * fps, total // 2 + 30 * fps)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(total):
            frame = noise[t % 16].copy()
            x = int((width - 8) * (t % (10 * fps)) / (10 * fps))
            frame[height // 2: height // 2 + 8, x: x + 8] = 128
            if event[0] <= t < event[1]:
                frame[10:40, 10:40] = (220, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--window", type=float, default=4.0)
    parser.add_argument("--stride", type=float, default=2.0)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--ckpt", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        began = time.perf_counter()
        total = write_long_video(folder / "long.mp4", args.minutes, args.fps)
        written = time.perf_counter() - began
        out = Path(tmp) / "frames.jsonl"
        model = [f"ckpt={args.ckpt}"] if args.ckpt else ["conf=demo", "data.generate=null"]
        cmd = [sys.executable, "-c", "import resource, sys; from vau.cli import main; code = main(sys.argv[1:]); "
               "print('peak_rss_mib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024); sys.exit(code)",
               "predict", *model, "task=vad", f"videos={folder}", f"out={out}",
               f"vad.window_seconds={args.window}", f"vad.stride_seconds={args.stride}",
               f"vad.frames_per_window={args.frames}", f"data.eval_batch_size={args.batch}",
               f"module.generation.max_new_tokens={args.max_new_tokens}", "torch_threads=2"]
        began = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - began
        if run.returncode:
            sys.exit(f"predict failed ({run.returncode}):\n{run.stderr[-3000:]}")
        line = next(x for x in run.stdout.splitlines() if x.startswith("predict task=vad"))
        decode, model_s = (float(x) for x in re.findall(r"in ([\d.]+) s, model ([\d.]+) s", line)[0])
        rss = float(re.findall(r"peak_rss_mib ([\d.]+)", run.stdout)[0])
        record = json.loads(out.read_text().splitlines()[0])
        print(f"video: {args.minutes:g} min at {args.fps} fps ({total} frames, written in {written:.0f} s); windows "
              f"{args.window:g} s every {args.stride:g} s, {args.frames} frames each; model: "
              f"{args.ckpt or 'untrained tiny twin'}")
        print("| windows | frames decoded | of frames in file | decode s | model s | whole run s | peak RSS MiB |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| {len(record['windows'])} | {record['frames_decoded']} | {record['frames']} | {decode:.1f} | "
              f"{model_s:.1f} | {wall:.1f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
