"""Links that break, for the fault tests and the fault benchmark: programs in network
namespaces of their own, each joined to the caller's namespace by a veth link, and the means
to break those links.

    with FaultNetwork() as net:
        link = net.namespace("a")          # 10.X.N.2 in its namespace, 10.X.N.1 here
        proc = net.run(link, [python, "-m", "rpcbalancer.sim", "--host", link.address, ...])
        net.blackhole(link)                # every packet dropped both ways, no reset
        net.loss(link, 3)                  # 3% of the packets into the namespace dropped
        net.heal(link)                     # the rules gone

The faults are nftables rules in the namespace (a blackhole, random loss, a closed port, a
cut to one address), a token bucket on the link (bandwidth), the link set down and up (a
flapping route), and delay with jitter. The kernels of the machines here have no
``sch_netem``, so the delay is held in user space: an iptables rule hands the namespace's
packets to a queue (NFQUEUE) that :mod:`rpcbalancer.sim.delay` lets go late, each by its
own draw (so the jitter reorders them, as netem's does). Everything made is taken down at
exit, whatever happened: the processes started here (by their PIDs), the namespaces, their
links and their resolver files. Needs root, iproute2, nftables and (for delay) iptables.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .process import stop_process

_serial = itertools.count(1)


@dataclass
class Link:
    """One namespace and its veth link to the test's."""

    name: str
    namespace: str
    device: str
    """The link's end on the test's side."""
    address: str
    """The namespace's address."""
    gateway: str
    """The test side's address on the link."""


class FaultNetwork:
    def __init__(self) -> None:
        self.tag = f"{os.getpid() % 100000}-{next(_serial)}"
        self.links: list[Link] = []
        self.joins: list[tuple[Link, Link]] = []
        self.fenced = False
        self.subnet = 10 + (os.getpid() % 200)
        """The second byte of every address here (two test runs at once use two)."""
        self.procs: list[subprocess.Popen[Any]] = []
        self.delays: dict[str, subprocess.Popen[str]] = {}
        """Per namespace, the program holding its delayed packets."""

    def __enter__(self) -> FaultNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            stop_process(proc)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        for link in self.links:
            subprocess.run(["ip", "link", "del", link.device], capture_output=True, check=False)
            subprocess.run(["ip", "netns", "del", link.namespace], capture_output=True, check=False)
            shutil.rmtree(Path("/etc/netns") / link.namespace, ignore_errors=True)
        if self.fenced:
            self._fence("del")

    # -- building ------------------------------------------------------------------------

    def namespace(self, name: str) -> Link:
        index = len(self.links) + 1
        subnet = self.subnet
        link = Link(
            name=name,
            namespace=f"rpcbt-{self.tag}-{name}",
            device=f"rb{os.getpid() % 10000}x{index}",
            address=f"10.{subnet}.{index}.2",
            gateway=f"10.{subnet}.{index}.1",
        )
        self.links.append(link)  # (taken down at exit even if what follows fails)
        if not self.fenced:
            # Nothing for the test's addresses may leave by this host's default route: with
            # a link down (its own route gone), they are unreachable, not sent elsewhere.
            self.fenced = self._fence("add")
        ns = link.namespace
        for argv in (
            ["ip", "netns", "add", ns],
            ["ip", "link", "add", link.device, "type", "veth", "peer", "name", "eth0", "netns", ns],
            ["ip", "addr", "add", f"{link.gateway}/30", "dev", link.device],
            ["ip", "link", "set", link.device, "up"],
            ["ip", "-n", ns, "addr", "add", f"{link.address}/30", "dev", "eth0"],
            ["ip", "-n", ns, "link", "set", "eth0", "up"],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
        ):
            _run(argv)
        self._nft(link, "add table inet rpcbt")
        for hook in ("input", "output"):
            self._nft(
                link, f"add chain inet rpcbt {hook} {{ type filter hook {hook} priority 0; }}"
            )
        return link

    def join(self, near: Link, far: Link, service: str) -> str:
        """A veth link between two namespaces (not through the test's), over which ``near``
        reaches ``far``'s ``service`` address (see :meth:`serve_at`); ``near``'s address on
        it."""
        index = 100 + len(self.joins)
        self.joins.append((near, far))
        subnet = self.subnet
        mine, theirs = f"10.{subnet}.{index}.1", f"10.{subnet}.{index}.2"
        a, b = f"j{index}a", f"j{index}b"
        for argv in (
            ["ip", "-n", near.namespace, "link", "add", a, "type", "veth", "peer", "name", b,
             "netns", far.namespace],
            ["ip", "-n", near.namespace, "addr", "add", f"{mine}/30", "dev", a],
            ["ip", "-n", far.namespace, "addr", "add", f"{theirs}/30", "dev", b],
            ["ip", "-n", near.namespace, "link", "set", a, "up"],
            ["ip", "-n", far.namespace, "link", "set", b, "up"],
            ["ip", "-n", near.namespace, "route", "add", f"{service}/32", "via", theirs],
        ):  # fmt: skip
            _run(argv)
        return mine

    def serve_at(self, link: Link, service: str) -> None:
        """Give the namespace one more address, on its loopback, that joined namespaces
        reach it by (the same address from each)."""
        _run(["ip", "-n", link.namespace, "addr", "add", f"{service}/32", "dev", "lo"])

    def partition(self, link: Link, address: str, port: int) -> None:
        """Every packet between the namespace and ``address:port`` dropped (no reset)."""
        self._nft(link, f"add rule inet rpcbt output ip daddr {address} tcp dport {port} drop")
        self._nft(link, f"add rule inet rpcbt input ip saddr {address} tcp sport {port} drop")

    def close_port(self, link: Link, port: int, protocol: str = "tcp") -> None:
        """The namespace's ``port`` blackholed: what is sent to it or from it is dropped."""
        self._nft(link, f"add rule inet rpcbt input {protocol} dport {port} drop")
        self._nft(link, f"add rule inet rpcbt output {protocol} sport {port} drop")

    def resolver(self, link: Link, address: str, timeout: int = 1) -> None:
        """Programs started in the namespace ask the DNS server at ``address`` (a resolv.conf
        of the namespace's own, which ``ip netns exec`` puts over /etc/resolv.conf), giving
        up on one lookup after ``timeout`` seconds, twice."""
        folder = Path("/etc/netns") / link.namespace
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "resolv.conf").write_text(
            f"nameserver {address}\noptions timeout:{timeout} attempts:2\n"
        )

    def run(self, link: Link, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a program in the namespace (stopped at exit)."""
        proc = subprocess.Popen(["ip", "netns", "exec", link.namespace, *argv], **kw)
        self.procs.append(proc)
        return proc

    # -- breaking ------------------------------------------------------------------------

    def blackhole(self, link: Link) -> None:
        """Every packet into and out of the namespace dropped: no reset, no answer; open
        connections look alive."""
        self._nft(link, "add rule inet rpcbt input drop")
        self._nft(link, "add rule inet rpcbt output drop")

    def loss(self, link: Link, percent: int) -> None:
        """``percent`` % of the packets into the namespace dropped, at random."""
        self._nft(link, f"add rule inet rpcbt input numgen random mod 100 < {percent} drop")

    def delay(self, link: Link, seconds: float, jitter: float = 0.0) -> None:
        """Every packet into the namespace held ``seconds``, plus or minus up to ``jitter``
        (uniform, each packet its own draw: a later packet may overtake an earlier one), as
        ``tc netem delay`` would on the link toward it. One delay per link at a time."""
        if link.name in self.delays:
            raise ValueError(f"link {link.name} is delayed already")
        queue = self.links.index(link) + 1
        proc = self.run(link, [sys.executable, "-m", "rpcbalancer.sim.delay", "--queue",
                               str(queue), "--delay", str(seconds), "--jitter", str(jitter)],
                        stdout=subprocess.PIPE, text=True)  # fmt: skip
        self.delays[link.name] = proc
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the delay for {link.name} did not start (see its stderr)")
        # --queue-bypass: were the program gone, the packets would pass, not be dropped.
        _run(["ip", "netns", "exec", link.namespace, "iptables", "-A", "INPUT", "-j",
              "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"])  # fmt: skip

    def bandwidth(self, link: Link, rate: str) -> None:
        """The link toward the namespace limited to ``rate`` (``1mbit``)."""
        _run(["tc", "qdisc", "replace", "dev", link.device, "root", "tbf", "rate", rate,
              "burst", "32kbit", "latency", "400ms"])  # fmt: skip

    def down(self, link: Link) -> None:
        """The link down (a route gone: connections stall, new ones are refused)."""
        _run(["ip", "link", "set", link.device, "down"])

    def up(self, link: Link) -> None:
        _run(["ip", "link", "set", link.device, "up"])

    def heal(self, link: Link) -> None:
        """Every fault of the link gone (held packets let go at once)."""
        for hook in ("input", "output"):
            self._nft(link, f"flush chain inet rpcbt {hook}")
        delay = self.delays.pop(link.name, None)
        if delay is not None:
            _run(["ip", "netns", "exec", link.namespace, "iptables", "-F", "INPUT"])
            stop_process(delay)
        with contextlib.suppress(subprocess.CalledProcessError):
            _run(["tc", "qdisc", "del", "dev", link.device, "root"])

    def _fence(self, verb: str) -> bool:
        route = ["ip", "route", verb, "unreachable", f"10.{self.subnet}.0.0/16", "metric", "4000"]
        return subprocess.run(route, capture_output=True, check=False).returncode == 0

    def _nft(self, link: Link, rule: str) -> None:
        _run(["ip", "netns", "exec", link.namespace, "nft", rule])


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
