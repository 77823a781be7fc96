"""A WebSocket peer nobody on this project wrote: Python's `websockets`
package, driven by the integration tests (tests/websocket.rs).

    python3 ws_peer.py SCENARIO URL [ARG...]

Each scenario prints one JSON object per line: what it saw, for the test to
assert on. Exit status 0 unless the script itself failed.
"""

import asyncio
import json
import sys
import time

import websockets
from websockets.exceptions import ConnectionClosed


def say(**fields):
    print(json.dumps(fields), flush=True)


def closed(e):
    """The close frame the server sent, as a dict."""
    rcvd = e.rcvd
    return {"code": rcvd.code if rcvd else None, "reason": rcvd.reason if rcvd else None}


async def echo(url):
    async with websockets.connect(url, ping_interval=None) as ws:
        await ws.send("héllo")
        reply = await ws.recv()
        say(kind=type(reply).__name__, value=reply)
        await ws.send(b"\x00\xffbin")
        reply = await ws.recv()
        say(kind=type(reply).__name__, value=reply.hex())
        # Binary that happens to be UTF-8 keeps its opcode.
        await ws.send(b"ascii")
        reply = await ws.recv()
        say(kind=type(reply).__name__, value=reply.hex())
        # A fragmented text message, reassembled by the server.
        await ws.send(["frag", "ment", "ed"])
        say(kind="fragmented", value=await ws.recv())
        pong = await ws.ping(b"are you there")
        started = time.monotonic()
        await asyncio.wait_for(pong, 5)
        say(kind="pong", seconds=time.monotonic() - started)
        await ws.close(4100, "done here")
        say(kind="closed", code=ws.close_code, reason=ws.close_reason)


async def wait_close(url, hold):
    """Connects without client pings and waits (at most `hold` seconds) for
    the server to close, reading every message meanwhile."""
    async with websockets.connect(url, ping_interval=None, max_size=None) as ws:
        say(kind="open")
        started = time.monotonic()
        try:
            while True:
                msg = await asyncio.wait_for(ws.recv(), hold)
                say(kind="message", value=msg if isinstance(msg, str) else msg.hex())
        except ConnectionClosed as e:
            say(kind="closed", seconds=time.monotonic() - started, **closed(e))
        except asyncio.TimeoutError:
            say(kind="still_open", seconds=time.monotonic() - started)


async def too_big(url, size):
    async with websockets.connect(url, ping_interval=None, max_size=None) as ws:
        await ws.send("x" * int(size))
        try:
            await asyncio.wait_for(ws.recv(), 5)
            say(kind="answered")
        except ConnectionClosed as e:
            say(kind="closed", **closed(e))


async def probed(url, hold):
    """Stays silent (no pings of its own) for `hold` seconds: the library
    answers the server's probe Pings by itself. Then checks the connection
    still echoes."""
    async with websockets.connect(url, ping_interval=None) as ws:
        try:
            await asyncio.wait_for(ws.recv(), float(hold))
            say(kind="unexpected_message")
        except asyncio.TimeoutError:
            pass
        except ConnectionClosed as e:
            say(kind="closed", **closed(e))
            return
        await ws.send("still here")
        say(kind="echo", value=await asyncio.wait_for(ws.recv(), 5))


async def pubsub(url):
    async with websockets.connect(url) as sub, websockets.connect(url) as pub:
        await sub.send("SUB room")
        say(kind="sub", value=await sub.recv())
        for i in range(3):
            await pub.send(f"PUB room message {i}")
            say(kind="pub", value=await pub.recv())
        for _ in range(3):
            say(kind="msg", value=await sub.recv())
        await sub.send("PING browser-style")
        say(kind="pong", value=await sub.recv())
    # Resume: a new connection asks for what came after seq 1.
    async with websockets.connect(url) as again:
        await again.send("SUB room 1")
        say(kind="resub", value=await again.recv())
        for _ in range(2):
            say(kind="replay", value=await again.recv())


async def refused(url, origin):
    try:
        async with websockets.connect(url, origin=origin or None):
            say(kind="open")
    except websockets.InvalidStatus as e:
        say(kind="refused", status=e.response.status_code)


SCENARIOS = {
    "echo": echo,
    "wait_close": lambda url, hold="5": wait_close(url, float(hold)),
    "too_big": too_big,
    "probed": probed,
    "pubsub": pubsub,
    "refused": lambda url, origin="": refused(url, origin),
}

if __name__ == "__main__":
    scenario, url, *args = sys.argv[1:]
    asyncio.run(SCENARIOS[scenario](url, *args))
