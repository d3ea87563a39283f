"""The fault tests' network: :class:`rpcbalancer.sim.links.FaultNetwork` (namespaces, veth
links, nftables), and the check that this machine can make one.

Needs root and ``ip``/``nft``/``tc``/``iptables`` (iproute2, nftables, iptables: the delay): :func:`require_netns` skips with
the reason where they are missing, and fails when ``RPCBALANCER_REQUIRE_SERVICES`` is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from rpcbalancer.sim.links import FaultNetwork, Link

from .services import missing

__all__ = ["FaultNetwork", "Link", "require_netns"]


def require_netns() -> None:
    """Skip (or fail, when services are required) where namespaces cannot be made."""
    why = None
    if os.geteuid() != 0:
        why = "network namespaces need root"
    else:
        for tool in ("ip", "nft", "tc", "iptables"):
            if shutil.which(tool) is None:
                why = f"{tool} is not installed (iproute2, nftables, iptables)"
                break
    if why is None:
        name = f"rpcbt-probe-{os.getpid()}"
        made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
        if made.returncode != 0:
            why = f"ip netns add failed: {made.stderr.strip()}"
        else:
            subprocess.run(["ip", "netns", "del", name], check=False)
    if why is not None:
        missing(f"network namespaces ({why})")
