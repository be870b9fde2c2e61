"""Decode + sample throughput: vau's reader against ``qwen_vl_utils.fetch_video`` on the same files.

Both sides read the same generated H.264 videos, take the same frame indices (``linspace(0, total-1, N)``,
qwen-vl-utils' rule) and return frames of the same size (the Qwen2-VL pixel budget ``--min-pixels`` /
``--max-pixels``). qwen-vl-utils decodes with decord, then resizes in float with torchvision; vau decodes with
its ``pyav`` decoder (``--decoder``; key-frame groups in parallel, unwanted non-reference frames skipped; see
``vau/datamodules/decoders.py``) and resizes in uint8 right away (``vau.datamodules.video.read_clip``). A third
column times vau with its on-disk frame cache warm (evaluation clips are read once per epoch, always the same
frames). Both sides use every core: decord with its default threads, vau with ``--threads 0``.

qwen-vl-utils is not a vau dependency; install it for this benchmark only: ``pip install --no-deps
qwen-vl-utils`` (it then uses decord: there is no torchcodec here; ``FORCE_QWENVL_VIDEO_READER=decord`` is set).

Usage:
    python benchmarks/video_io.py                       # noisy and cctv, 640x360 and 1280x720, 60 s and 5 min
    python benchmarks/video_io.py --quick               # 640x360, 20 s: about a minute
    python benchmarks/video_io.py --sizes 640x360 --seconds 60 --frames 16,64 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vau.backbones.qwen import frame_size_fn  # noqa: E402
from vau.datamodules.decoders import open_video  # noqa: E402
from vau.datamodules.samplers import FrameSelection  # noqa: E402
from vau.datamodules.video import FrameCache, read_clip  # noqa: E402

QWEN_MIN_PIXELS = 128 * 28 * 28  # qwen-vl-utils' VIDEO_MIN_TOKEN_NUM * 28 * 28
QWEN_MAX_PIXELS = 768 * 28 * 28  # VIDEO_MAX_TOKEN_NUM * 28 * 28 (VAU-R1 evaluates with this budget)


class LinspaceSampler:
    """qwen-vl-utils' frame rule, as a vau frame sampler: N frames at ``round(linspace(0, total-1, N))``."""

    def __init__(self, num_frames: int) -> None:
        self.num_frames = num_frames

    def __call__(self, total_frames: int, fps: float, rng=None) -> FrameSelection:
        indices = np.linspace(0, total_frames - 1, self.num_frames).round().astype(np.int64)
        return FrameSelection(indices, indices / fps)

    def cache_key(self) -> str:
        return f"linspace-{self.num_frames}"


def make_video(path: Path, width: int, height: int, fps: int, seconds: float, content: str = "noisy") -> Path:
    """A camera-like H.264 clip with x264's defaults (GOP of 250, up to 3 B-frames where x264 finds them useful).

    ``noisy``: a gradient drifting across the frame, two moving boxes and fresh sensor noise every frame; x264
    then codes nearly every frame as a reference frame (the worst case for skipping). ``cctv``: a fixed scene
    with fixed-pattern noise, two moving boxes and faint temporal noise, like a surveillance camera; x264 then
    uses B-frames, and non-reference ones among them, as it does on typical footage.
    """
    import av

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 255 // (width + height)], -1).astype(np.uint8)
    if content == "cctv":
        base = (base // 2 + rng.integers(0, 24, size=(height, width, 3), dtype=np.uint8)).astype(np.uint8)
        noise = rng.integers(0, 3, size=(8, height, width, 3), dtype=np.uint8)
    else:
        noise = rng.integers(0, 10, size=(8, height, width, 3), dtype=np.uint8)
    box = height // 4
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for i in range(int(fps * seconds)):
            frame = (np.roll(base, 2 * i, axis=1) if content == "noisy" else base) + noise[i % 8]
            for k, color in enumerate(((200, 50, 50), (40, 160, 220))):
                x = int((np.sin(i / (30 + 17 * k)) * 0.4 + 0.5) * (width - box))
                y = int((np.cos(i / (45 + 11 * k)) * 0.4 + 0.5) * (height - box))
                frame[y:y + box, x:x + box] = color
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.rename(path)
    return path


def non_reference_share(path: Path) -> float:
    """Share of frames no other frame references (H.264 nal_ref_idc = 0), read from the packets' NAL headers:
    the frames vau's decoder may skip when they are not wanted."""
    import av

    total = nonref = 0
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            data = bytes(packet)
            pos = 0
            while pos + 5 <= len(data):  # mp4 stores NAL units with 4-byte lengths
                size, header = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4]
                if header & 0x1F in (1, 5):  # a coded slice: its nal_ref_idc says if it is referenced
                    total += 1
                    nonref += (header >> 5) & 3 == 0
                    break
                pos += 4 + size
    return nonref / max(total, 1)


def qwen_read(path: Path, n: int, min_pixels: int, max_pixels: int):
    from qwen_vl_utils import fetch_video

    video, meta = fetch_video({"video": str(path), "nframes": n, "min_pixels": min_pixels, "max_pixels": max_pixels},
                              return_video_metadata=True)
    return video, list(meta["frames_indices"])


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="640x360,1280x720", help="WxH list")
    parser.add_argument("--seconds", default="60,300", help="clip durations")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--content", default="noisy,cctv", help="clip contents (see make_video)")
    parser.add_argument("--frames", default="16,64", help="sampled frames per clip")
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs per cell")
    parser.add_argument("--threads", type=int, default=0,
                        help="vau decoding threads per video (0 = one per core; qwen-vl-utils' decord uses 0)")
    parser.add_argument("--decoder", default="pyav", choices=("pyav", "decord"), help="vau's decoder")
    parser.add_argument("--min-pixels", type=int, default=QWEN_MIN_PIXELS)
    parser.add_argument("--max-pixels", type=int, default=QWEN_MAX_PIXELS)
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "vau-video-io"),
                        help="generated videos are kept here and reused")
    parser.add_argument("--quick", action="store_true", help="640x360, 20 s, 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.seconds, args.repeats = "640x360", "20", 2
    try:
        import qwen_vl_utils  # noqa: F401
    except ImportError:
        print("qwen-vl-utils is not installed: pip install --no-deps qwen-vl-utils", file=sys.stderr)
        return 2
    from transformers import Qwen2VLVideoProcessor

    # vau's size rule comes from the processor the model would use, configured with the same budget.
    processor = Qwen2VLVideoProcessor(size={"shortest_edge": args.min_pixels, "longest_edge": args.max_pixels})
    size_fn = frame_size_fn(processor)
    cache_dir = Path(tempfile.mkdtemp(prefix="vau-frame-cache-"))
    rows = []
    videos = []
    for content in args.content.split(","):
        for size in args.sizes.split(","):
            width, height = (int(x) for x in size.lower().split("x"))
            for seconds in (float(s) for s in args.seconds.split(",")):
                suffix = "" if content == "noisy" else f"_{content}"  # noisy files keep their earlier names
                name = f"{width}x{height}_{args.fps}fps_{seconds:g}s{suffix}.mp4"
                path = make_video(Path(args.dir) / name, width, height, args.fps, seconds, content)
                label = f"{content} {width}x{height} {seconds:g}s ({non_reference_share(path):.0%} non-ref)"
                videos.append((label, path))
    for label, path in videos:
        for n in (int(f) for f in args.frames.split(",")):
            qwen_read(path, n, args.min_pixels, args.max_pixels)  # warm the page cache for both sides
            cache = FrameCache(cache_dir)
            run_qwen = partial(qwen_read, path, n, args.min_pixels, args.max_pixels)
            run_vau = partial(read_clip, path, LinspaceSampler(n), size_fn=size_fn, num_threads=args.threads,
                              decoder=args.decoder)
            run_hit = partial(read_clip, path, LinspaceSampler(n), size_fn=size_fn, size_key="bench", cache=cache)
            qwen_times, vau_times = [], []
            for _ in range(args.repeats):  # interleaved, so background load hits both sides alike
                t, (qwen_video, qwen_idx) = timed(run_qwen, 1)
                qwen_times.append(t)
                t, clip = timed(run_vau, 1)
                vau_times.append(t)
            t_qwen, t_vau = statistics.median(qwen_times), statistics.median(vau_times)
            run_hit()  # fills the cache
            t_hit, _ = timed(run_hit, args.repeats)
            ours = clip.frames.astype(np.float32)
            theirs = qwen_video.permute(0, 2, 3, 1).numpy()
            same = list(clip.indices) == qwen_idx and ours.shape == theirs.shape
            diff = float(np.abs(ours - theirs).mean()) if ours.shape == theirs.shape else float("nan")
            # Equal output before the resize: vau's decoder against decord's get_batch, bit for bit.
            decoded = open_video(path, args.decoder, args.threads).frames(clip.indices)
            identical = np.array_equal(decoded, open_video(path, "decord").frames(clip.indices))
            rows.append((label, n, f"{clip.frames.shape[1]}x{clip.frames.shape[2]}",
                         t_qwen, t_vau, t_qwen / t_vau, t_hit, t_qwen / t_hit, same and identical, diff))
            print(f"... {rows[-1][0]} N={n}: qwen {t_qwen:.3f}s vau {t_vau:.3f}s", file=sys.stderr, flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\ndecode + sample, median of {args.repeats} (cores: {os.cpu_count()}, load average {load:.1f}, "
          f"vau decoder: {args.decoder}, threads: {args.threads})\n")
    print("| video | frames | output HxW | qwen_vl_utils (s) | vau (s) | speed-up | vau cache hit (s) | speed-up "
          "| same frames, size, decoded pixels | mean abs pixel diff |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---|---:|")
    for video, n, hw, tq, tv, r, th, rh, same, diff in rows:
        print(f"| {video} | {n} | {hw} | {tq:.3f} | {tv:.3f} | {r:.2f}x | {th:.4f} | {rh:.0f}x | "
              f"{'yes' if same else 'NO'} | {diff:.2f} |")
    return 0 if all(r[8] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
