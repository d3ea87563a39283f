"""Delay with jitter for a network namespace's packets, where the kernel has no ``tc netem``.

    ip netns exec NS python -m rpcbalancer.sim.delay --queue 7 --delay 0.2 --jitter 0.1

A firewall rule in the namespace hands its packets to queue 7 (``iptables -A INPUT -j NFQUEUE
--queue-num 7 --queue-bypass``, see :meth:`rpcbalancer.sim.links.FaultNetwork.delay`); this
program takes them from the kernel's queue over netlink (nfnetlink_queue, ``CONFIG_NETFILTER_
NETLINK_QUEUE``, built into the kernels here where ``sch_netem`` is not) and lets each one go
after ``delay`` seconds plus or minus up to ``jitter``, drawn uniformly for each packet, as
``netem delay 200ms 100ms`` does. A packet that draws less than the one before it overtakes
it: the jitter reorders, as it does on a real path (and as netem's does).

The packets stay in the kernel; only their verdicts come from here (their metadata is all
that is copied). It prints ``ready`` once bound and listening for signals. On SIGTERM or
SIGINT every packet still held is let go at once, so that stopping it loses nothing. Linux
only, as root in the namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import os
import random
import select
import signal
import socket
import struct
import time
from collections.abc import Callable

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_ACCEPT = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
MAXLEN = 65536
"""Packets the kernel holds for the queue before it drops new ones."""


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _message(kind: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, 0, 0)
    return header + body


def _attrs(data: bytes, start: int, end: int) -> dict[int, bytes]:
    found = {}
    while start + 4 <= end:
        size, kind = struct.unpack_from("=HH", data, start)
        if size < 4:
            break
        found[kind & 0x3FFF] = data[start + 4 : start + size]
        start += (size + 3) & ~3
    return found


class Delay:
    """The queue bound on a netlink socket, and the packets held, by when each may go."""

    def __init__(self, queue: int, delay: float, jitter: float, seed: int | None = None) -> None:
        self.queue = queue
        self.delay = delay
        self.jitter = jitter
        self.random = random.Random(seed)
        self.held: list[tuple[float, int]] = []
        """(when it goes, packet id), a heap."""
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 0))
        self._configure(_attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, 0)))
        self._configure(_attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)))
        self._configure(_attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", MAXLEN)))

    def _configure(self, attrs: bytes) -> None:
        self.sock.send(_message(NFQNL_MSG_CONFIG, self.queue, attrs, NLM_F_REQUEST | NLM_F_ACK))
        data = self.sock.recv(65536)
        _, kind = struct.unpack_from("=IH", data)
        if kind == NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", data, 16)
            if error:
                raise OSError(-error, f"nfnetlink_queue {self.queue}: {os.strerror(-error)}")

    def take(self) -> None:
        """Hold every packet the kernel has queued for us now."""
        data = self.sock.recv(1 << 20)
        at = 0
        now = time.monotonic()
        while at + 16 <= len(data):
            size, kind = struct.unpack_from("=IH", data, at)
            if size < 16:
                break
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                header = _attrs(data, at + 20, at + size).get(NFQA_PACKET_HDR)
                if header is not None:
                    (packet,) = struct.unpack_from("!I", header)
                    wait = self.delay + self.random.uniform(-self.jitter, self.jitter)
                    heapq.heappush(self.held, (now + max(0.0, wait), packet))
            at += (size + 3) & ~3

    def release(self, until: float) -> None:
        """Let go every packet due by ``until``."""
        while self.held and self.held[0][0] <= until:
            _, packet = heapq.heappop(self.held)
            verdict = _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet))
            self.sock.send(_message(NFQNL_MSG_VERDICT, self.queue, verdict))

    def serve(self, started: Callable[[], None] = lambda: None) -> None:
        """Hold and let go until SIGTERM or SIGINT, then let every held packet go;
        ``started`` is called once either signal would be handled so."""
        stopping: list[int] = []
        wake, woken = socket.socketpair()
        wake.setblocking(False)
        signal.set_wakeup_fd(wake.fileno())  # a signal wakes the select at once
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda number, _: stopping.append(number))
        started()
        while not stopping:
            timeout = max(0.0, self.held[0][0] - time.monotonic()) if self.held else None
            ready, _, _ = select.select([self.sock, woken], [], [], timeout)
            if self.sock in ready:
                # ENOBUFS: the kernel dropped messages (and their packets, as a loss would).
                with contextlib.suppress(OSError):
                    self.take()
            self.release(time.monotonic())
        self.release(float("inf"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rpcbalancer.sim.delay")
    parser.add_argument("--queue", type=int, required=True, help="the NFQUEUE number")
    parser.add_argument("--delay", type=float, required=True, help="seconds")
    parser.add_argument("--jitter", type=float, default=0.0, help="seconds, either way")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    if args.delay < 0 or args.jitter < 0:
        parser.error("--delay and --jitter must not be negative")
    delay = Delay(args.queue, args.delay, args.jitter, args.seed)
    delay.serve(started=lambda: print("ready", flush=True))


if __name__ == "__main__":
    main()
