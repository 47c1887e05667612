"""Load test for `diptych serve`: N concurrent clients post edits for T seconds.

Prints throughput, p50/p99 latency and status counts (200 / 429 / other 4xx / 5xx). Under overload the
queue bound should show as some 429s and no 5xx.

example:
  python benchmarks/load.py --tiny --clients 16 --seconds 10 --queue 4
  python benchmarks/load.py --url http://127.0.0.1:8000 --clients 8 --seconds 30 --steps 28
"""

from __future__ import annotations

import argparse
import asyncio
import io
import shlex
import socket
import sys
import tempfile
import threading
import time
from collections import Counter

import httpx
import numpy as np
from PIL import Image


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Concurrent clients against a diptych server on 127.0.0.1.",
        epilog=__doc__.split("example:")[1] and "example:" + __doc__.split("example:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="server base URL on 127.0.0.1, e.g. http://127.0.0.1:8000")
    target.add_argument("--tiny", action="store_true", help="start an own server on a tiny random model")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--seconds", type=float, default=10.0, help="test duration (default 10)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per edit (default 2)")
    parser.add_argument("--size", type=int, default=32, help="source image side in pixels (default 32)")
    parser.add_argument("--api-key", default=None, help="key for a server that needs one")
    parser.add_argument("--queue", type=int, default=4, help="--tiny: queue bound (default 4)")
    parser.add_argument("--max-batch", type=int, default=4, help="--tiny: micro-batch size (default 4)")
    args = parser.parse_args(argv)
    if args.url and not args.url.startswith(("http://127.0.0.1", "http://localhost")):
        parser.error("--url must point at 127.0.0.1 (this tool only loads local servers)")
    if args.clients < 1 or args.seconds <= 0:
        parser.error("--clients must be >= 1 and --seconds > 0")
    return args


def start_tiny_server(args: argparse.Namespace) -> tuple[str, object]:
    """A uvicorn server in a thread on a tiny random Fill model; returns its URL and the server."""
    import uvicorn

    from diptych.editor import Editor
    from diptych.serve import ServeSettings, create_app
    from diptych.testing import save_tiny_fill_pipeline

    folder = tempfile.mkdtemp(prefix="diptych-load-")
    editor = Editor.from_pretrained(str(save_tiny_fill_pipeline(f"{folder}/pipe")), device="cpu", dtype="fp32")
    editor.default_width = 32
    settings = ServeSettings(
        db_path=f"{folder}/sessions.sqlite3", ui=False, queue_size=args.queue, max_batch=args.max_batch
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(editor, settings=settings), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the tiny server did not start within 60 s")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


async def client(url: str, body: bytes, args, stop_at: float, latencies: list[float], statuses: Counter) -> None:
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    async with httpx.AsyncClient(timeout=300) as http:
        while time.monotonic() < stop_at:
            start = time.monotonic()
            try:
                response = await http.post(
                    f"{url}/v1/edits",
                    files={"image": ("load.png", body, "image/png")},
                    data={"instruction": "make it red", "steps": str(args.steps)},
                    headers=headers,
                )
                status = response.status_code
            except httpx.HTTPError:
                status = 0  # connection error
            statuses[status] += 1
            if status == 200:
                latencies.append(time.monotonic() - start)
            elif status == 429:
                await asyncio.sleep(0.2)  # back off a little (not the full Retry-After: keep the load up)


async def run(url: str, args) -> tuple[list[float], Counter, float]:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    latencies: list[float] = []
    statuses: Counter = Counter()
    start = time.monotonic()
    stop_at = start + args.seconds
    await asyncio.gather(
        *(client(url, buffer.getvalue(), args, stop_at, latencies, statuses) for _ in range(args.clients))
    )
    return latencies, statuses, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = None
    url = args.url
    if args.tiny:
        url, server = start_tiny_server(args)
    try:
        latencies, statuses, elapsed = asyncio.run(run(url.rstrip("/"), args))
    finally:
        if server is not None:
            server.should_exit = True
    ok = statuses[200]
    four = sum(n for s, n in statuses.items() if 400 <= s < 500 and s != 429)
    five = sum(n for s, n in statuses.items() if s >= 500)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"{args.clients} clients for {elapsed:.1f} s against {url}")
    print(f"throughput: {ok / elapsed:.2f} edits/s ({ok} done)")
    if latencies:
        p50, p99 = np.percentile(latencies, [50, 99])
        print(f"latency of successful edits: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    print(f"status counts: 200={ok} 429={statuses[429]} 4xx={four} 5xx={five} connection errors={statuses[0]}")
    print("queue bound held (no 5xx)" if five == 0 and statuses[0] == 0 else "PROBLEM: server errors under load")
    return 0 if five == 0 and statuses[0] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
