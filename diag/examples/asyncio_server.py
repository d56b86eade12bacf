"""An asyncio HTTP/1.1 keep-alive server (one event loop thread), with an optional blocking fault.

`--fault block` makes every `--every`-th request call time.sleep() on the loop thread (a blocked
event loop: every connection waits), `--fault none` is the healthy control.

    python3 -m diag.examples.asyncio_server --port 8081 --fault block
"""
from __future__ import annotations

import argparse
import asyncio
import time

BODY = b'{"ok": true}\n'
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: dict) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                break
            state["n"] += 1
            if state["fault"] == "block" and state["n"] % state["every"] == 0:
                time.sleep(state["block_s"])     # the fault: blocking call on the loop thread
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port: int, state: dict) -> None:
    srv = await asyncio.start_server(lambda r, w: handle(r, w, state), "127.0.0.1", port)
    print(f"listening on 127.0.0.1:{srv.sockets[0].getsockname()[1]}", flush=True)
    async with srv:
        await srv.serve_forever()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--fault", choices=("block", "none"), default="none")
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--block-ms", type=float, default=30.0)
    a = ap.parse_args(argv)
    state = {"n": 0, "fault": a.fault, "every": a.every, "block_s": a.block_ms / 1000}
    try:
        asyncio.run(serve(a.port, state))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
