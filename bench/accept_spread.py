"""How connections spread over N asyncio (uvloop) processes: SO_REUSEPORT vs one shared socket.

    .venv/bin/python bench/accept_spread.py [--procs 2,4] [--connections 256] [--runs 3]

The choice behind `vllm-sleep gateway --workers` (docs/gateway.md, "Worker processes"): each
process runs a minimal keep-alive HTTP responder on uvloop, either listening on its own
SO_REUSEPORT socket or accepting from one listening socket inherited from this script (the
pre-fork layout). wrk opens `--connections` keep-alive connections at once for 3 s; each
process reports how many connections it accepted. The result is the share of the busiest
process (1/N is even).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.10.31"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


def serve(fd: int, port: int, out: Path) -> None:
    import asyncio

    import uvloop

    accepted = 0

    class Responder(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            nonlocal accepted
            accepted += 1
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            for _ in range(data.count(b"\r\n\r\n")):
                self.transport.write(RESPONSE)  # type: ignore[attr-defined]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if fd >= 0:
            sock = socket.socket(fileno=fd)
            server = await loop.create_server(Responder, sock=sock)
        else:
            server = await loop.create_server(Responder, HOST, port, reuse_port=True, backlog=1024)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print("READY", flush=True)
        await stop.wait()
        server.close()

    uvloop.run(main())
    out.write_text(str(accepted))


def run(mode: str, procs: int, connections: int, tmp: Path) -> list[int]:
    shared: socket.socket | None = None
    port = 0
    if mode == "shared":
        shared = socket.socket()
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        shared.bind((HOST, 0))
        shared.listen(1024)
        port = shared.getsockname()[1]
    else:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
    children = []
    for i in range(procs):
        fd = shared.fileno() if shared else -1
        argv = [sys.executable, __file__, "--serve", str(fd), str(port), str(tmp / f"{mode}{i}")]
        child = subprocess.Popen(
            argv, stdout=subprocess.PIPE, text=True, pass_fds=(fd,) if shared else ()
        )
        assert child.stdout is not None and "READY" in child.stdout.readline()
        children.append(child)
    if shared:
        shared.close()  # the children hold it
    subprocess.run(
        ["wrk", "-t1", f"-c{connections}", "-d3s", f"http://{HOST}:{port}/"],
        capture_output=True,
        check=True,
    )
    for child in children:
        child.send_signal(signal.SIGTERM)
    for child in children:
        child.wait(10)
    return [int((tmp / f"{mode}{i}").read_text()) for i in range(procs)]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--procs", type=lambda s: [int(x) for x in s.split(",")], default=[2, 4])
    p.add_argument("--connections", type=int, default=256)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    import tempfile

    result: dict[str, dict[str, list[list[int]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.procs:
            for mode in ("reuseport", "shared"):
                for _ in range(args.runs):
                    counts = run(mode, n, args.connections, Path(tmp))
                    result.setdefault(str(n), {}).setdefault(mode, []).append(counts)
                    busiest = max(counts) / max(1, sum(counts))
                    print(f"procs={n} {mode:<9} accepted={counts} busiest={busiest:.0%}")
                    time.sleep(0.2)
    print(json.dumps({"connections": args.connections, "loadavg": os.getloadavg(), **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
