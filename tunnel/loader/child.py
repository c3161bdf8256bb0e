"""A shard process: owns isolates on its main thread and serves the loader over a socket.

Started by ``shard.Shard`` as ``python -m tunnel.loader.child FD``. It reads frames (see
``protocol``), runs each message on its isolate, and answers every batch of frames with one
frame ``{"ack": seq, "ev": [...]}``. It exits when the socket closes (the loader went away).
Only this process runs JavaScript; a runaway that the engine cannot interrupt is ended by the
loader killing the whole process.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
import sys
import time

from .engine import enable_bytecode
from .handlers import Child
from .protocol import _HEAD, FrameBuffer, encode

_PROGRESS_S = 0.005
_WORK = struct.Struct("<Qd")  # shard.WORK: seq being handled, monotonic time it started


def reply(seq: int, out: list, js: list) -> bytes:
    """Encode the answer to a batch: loader events in the header, runtime events in the blob."""
    parts = []
    index = []
    off = 0
    for wid, rid, raw in js:
        data = raw.encode("utf-8", "surrogatepass")
        index.append((wid, rid, off, len(data)))
        parts.append(data)
        off += len(data)
    blob = b"".join(parts)
    if out:
        return encode({"ack": seq, "ev": out, "js": index}, blob)
    # the usual answer (runtime events only): the header is formatted from integers, not dumped
    h = b'{"ack":%d,"ev":[],"js":[%b]}' % (seq, b",".join([b"[%d,%d,%d,%d]" % i for i in index]))
    return b"".join((_HEAD.pack(4 + len(h) + len(blob), len(h)), h, blob))


def main(fd: int, current_fd: int = -1) -> None:
    """Serve the loader on socket ``fd`` until it closes.

    Answers each batch of frames read at once with one frame, and sooner when a batch runs
    long (every ``_PROGRESS_S``), so the loader's watchdog sees progress.
    """
    sock = socket.socket(fileno=fd)
    # the seq of the message being worked on and when it started (0: idle), in memory shared with
    # the loader: it sees a long message at once (and moves other keys away), and if it has to
    # kill this process it knows exactly which request was running
    current = mmap.mmap(current_fd, _WORK.size) if current_fd >= 0 else None
    frames = FrameBuffer()
    child = Child()
    fast = enable_bytecode()
    sock.sendall(encode({"hello": os.getpid(), "bytecode": fast}))
    clock = time.monotonic
    buf = bytearray(1 << 20)   # recv_into a reused buffer: recv(1 MiB) would mmap/munmap per call
    view = memoryview(buf)
    while True:
        try:
            n = sock.recv_into(buf)
        except OSError:
            return
        if not n:
            return
        data = view[:n].tobytes()
        out: list = []
        js: list = []
        seq = None
        last = clock()
        for header, blob in frames.feed(data):
            seq = header.get("seq", seq)
            if current is not None and seq is not None:
                _WORK.pack_into(current, 0, seq, clock())
            child.handle(header, blob, out, js)
            if clock() - last > _PROGRESS_S:
                sock.sendall(reply(seq, out, js))
                out, js, last = [], [], clock()
        if current is not None and seq is not None:
            _WORK.pack_into(current, 0, seq, 0.0)
        if seq is not None and (out or js or clock() - last <= _PROGRESS_S):
            sock.sendall(reply(seq, out, js))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else -1)
