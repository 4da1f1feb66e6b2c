"""A minimal Foxglove WebSocket protocol client (the ``websockets`` package), for tests and benchmarks.

It speaks the protocol as a viewer does: read ``serverInfo`` and ``advertise``, subscribe by
channel id, then take binary ``messageData`` frames (opcode 1, subscription id, log time,
payload) and decode each with the schema its channel advertised (JSON, or protobuf from the
advertised descriptor set).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import websockets
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SUBPROTOCOL = "foxglove.sdk.v1"
MESSAGE_DATA = 1


def _decoder(channel: dict[str, Any]) -> Callable[[bytes], Any]:
    if channel["encoding"] == "json":
        return json.loads
    pool = descriptor_pool.DescriptorPool()
    for fd in descriptor_pb2.FileDescriptorSet.FromString(base64.b64decode(channel["schema"])).file:
        pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(channel["schemaName"])).FromString


async def connect(url: str, timeout_s: float = 10.0, rcvbuf: int | None = None):  # noqa: ANN201 - a connection
    """Connect (retrying while the server starts); ``rcvbuf`` shrinks the socket's receive buffer, so a
    client that stops reading pushes back on the server within a fraction of a second."""
    deadline = time.monotonic() + timeout_s
    host, _, port = url.removeprefix("ws://").partition(":")
    while True:
        sock = socket.socket()
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.connect((host, int(port)))
            return await websockets.connect(url, sock=sock, subprotocols=[SUBPROTOCOL], max_queue=16)
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def subscribe_all(ws: Any) -> dict[int, dict[str, Any]]:
    """Wait for the channel advertisement, subscribe to every channel; returns subscription id -> channel."""
    channels: dict[str, dict[str, Any]] = {}
    while not channels:
        msg = await asyncio.wait_for(ws.recv(), 10.0)
        if isinstance(msg, str) and json.loads(msg)["op"] == "advertise":
            channels = {c["topic"]: c for c in json.loads(msg)["channels"]}
    subs = {i + 1: c for i, c in enumerate(channels.values())}
    await ws.send(json.dumps({"op": "subscribe",
                              "subscriptions": [{"id": i, "channelId": c["id"]} for i, c in subs.items()]}))
    return subs


async def receive(ws: Any, subs: dict[int, dict[str, Any]], seconds: float) -> dict[str, list[tuple[int, Any]]]:
    """Decoded messages by topic as (log_time_ns, message), for ``seconds`` or until the server closes."""
    decoders = {i: _decoder(c) for i, c in subs.items()}
    out: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            msg = await asyncio.wait_for(ws.recv(), left)
        except (asyncio.TimeoutError, websockets.ConnectionClosed):
            break
        if isinstance(msg, bytes) and msg[0] == MESSAGE_DATA:
            _, sub, log_time = struct.unpack_from("<BIQ", msg)
            out[subs[sub]["topic"]].append((log_time, decoders[sub](msg[13:])))
    return out
