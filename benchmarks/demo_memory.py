"""Peak memory (RSS) of the running demo while it captions worst-case uploads at once.

    python benchmarks/demo_memory.py                          # untrained default model, 4 uploads at once
    python benchmarks/demo_memory.py --checkpoint runs/shapes/best.pt --uploads 8 --output demo_memory.json
    python benchmarks/demo_memory.py --batch 16      # one /caption_batch request with 16 such files

The worst case is a small file that decodes to as many pixels as the loader accepts: a 6300 x 6300
RGBA PNG of one colour at half transparency (39.7 megapixels, under the 40 MP cap; about 170 KB), so
every request decodes 160 MB of RGBA and composites it on white. The benchmark starts the real demo
(`python demo.py --checkpoint ... --threads 1`) in a child process, sends --uploads requests at the same
moment through `gradio_client` (`/caption`, beam 3), or with --batch N one `/caption_batch` request
holding N copies of the file, waits for every answer, and reads the demo
process's peak RSS (VmHWM in /proc) before and after. Without --checkpoint, the default config
(configs/shapes.yaml) is built untrained and saved to a temporary checkpoint: memory does not depend on
the weights' values. Prints a Markdown table and writes the numbers as JSON (--output).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIDE = 6300  # 6300² = 39.7 MP, just under captioner.images.MAX_PIXELS
STARTUP_SECONDS = 120  # the demo imports torch and gradio before it listens


def worst_case_png(path: Path, side: int = SIDE) -> Path:
    """One colour at half transparency: compresses to ~170 KB, decodes to side² RGBA pixels."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (10, 200, 30, 128)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def untrained_checkpoint(path: Path) -> Path:
    """The default config's model, untrained, as a checkpoint the demo can load."""
    import torch

    from captioner.checkpoint import save_checkpoint
    from captioner.config import load_config, to_dict
    from captioner.model import Captioner
    from captioner.vocab import Vocabulary

    torch.manual_seed(0)  # the same untrained weights, so the same captions, in every measurement
    config = load_config(REPO / "configs" / "shapes.yaml")
    vocab = Vocabulary(f"word{index}" for index in range(40))
    model = Captioner(config.model, vocab)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"config": to_dict(config), "vocab": vocab.to_dict(), "model": model.state_dict()}, path)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def memory_mb(pid: int) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of process `pid`, in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss": int(fields["VmRSS"].split()[0]) / 1024, "peak": int(fields["VmHWM"].split()[0]) / 1024}


def start_demo(checkpoint: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "demo.py", "--checkpoint", str(checkpoint), "--port", str(port), "--threads", "1",
               "--runs-dir", str(checkpoint.parent)]
    environment = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "GRADIO_ANALYTICS_ENABLED": "False"}
    demo = subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if demo.poll() is not None:
            raise RuntimeError(f"the demo exited with {demo.returncode}: {demo.stderr.read().decode()[-2000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return demo
        time.sleep(0.5)
    demo.kill()
    raise RuntimeError(f"the demo did not listen on port {port} within {STARTUP_SECONDS} s")


def send_at_once(port: int, image: Path, uploads: int) -> tuple[list[str], float]:
    """`uploads` /caption requests at the same moment; (each answer or error message, seconds for all)."""
    from gradio_client import Client, handle_file

    client = Client(f"http://127.0.0.1:{port}/", verbose=False)

    def caption(_: int) -> str:
        try:
            return f"caption: {client.predict(handle_file(str(image)), 3, api_name='/caption')}"
        except Exception as error:  # a refusal is an answer too; the benchmark reports it
            return f"error: {error}"

    started = time.perf_counter()
    with ThreadPoolExecutor(uploads) as pool:
        answers = list(pool.map(caption, range(uploads)))
    return answers, time.perf_counter() - started


def send_batch(port: int, image: Path, files: int) -> tuple[list[str], float]:
    """One `/caption_batch` request with `files` copies of `image`; (its notes or error, seconds)."""
    from gradio_client import Client, handle_file

    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    copies = []
    for index in range(files):  # distinct names, as a user's files would have
        copy = image.with_name(f"copy{index}.png")
        copy.write_bytes(image.read_bytes())
        copies.append(handle_file(str(copy)))
    started = time.perf_counter()
    try:
        gallery, notes = client.predict(copies, 1, api_name="/caption_batch")
        answer = f"{len(gallery)} captioned; {notes.splitlines()[0][:120]}"
    except Exception as error:  # a refusal is an answer too; the benchmark reports it
        answer = f"error: {error}"
    return [answer], time.perf_counter() - started


def measure(checkpoint: Path, image: Path, uploads: int, batch: int = 0) -> dict:
    port = free_port()
    demo = start_demo(checkpoint, port)
    try:
        idle = memory_mb(demo.pid)
        answers, seconds = send_batch(port, image, batch) if batch else send_at_once(port, image, uploads)
        busy = memory_mb(demo.pid)
    finally:
        demo.terminate()
        demo.wait(timeout=30)
    return {"uploads": batch or uploads, "batch": bool(batch), "image": f"{SIDE}x{SIDE} RGBA PNG, {image.stat().st_size / 1024:.0f} KB",
            "idle_rss_mb": round(idle["rss"], 1), "idle_peak_mb": round(idle["peak"], 1),
            "peak_rss_mb": round(busy["peak"], 1), "seconds": round(seconds, 2), "answers": answers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint to serve (default: the default config, untrained)")
    parser.add_argument("--uploads", type=int, default=4, help="requests sent at the same moment (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=0,
                        help="instead, one /caption_batch request with this many copies of the file")
    parser.add_argument("--output", default=None, help="write the numbers to this JSON file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        checkpoint = Path(args.checkpoint) if args.checkpoint else untrained_checkpoint(folder / "demo" / "best.pt")
        result = measure(checkpoint, worst_case_png(folder / "worst.png"), args.uploads, args.batch)
    print(f"| uploads at once | image | idle RSS MB | peak RSS MB | seconds for all |\n|---|---|---|---|---|\n"
          f"| {result['uploads']} | {result['image']} | {result['idle_rss_mb']} | **{result['peak_rss_mb']}** | "
          f"{result['seconds']} |")
    for answer in result["answers"]:
        print(f"- {answer[:160]}")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
