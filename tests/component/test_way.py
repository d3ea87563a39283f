"""One way through: a routed, cached call that misses passes through each module of the way
(``proxy/``, ``upstream/``) at most twice, once down to the node and once back, in the order
the gateway's theory of operation gives; no module of the way is entered, left and entered
again on either leg; and what the way consults besides (the fleet's state, the cache's
storage, the JSON-RPC helpers, the chain presets) never calls back into it.

The call is traced with ``sys.setprofile`` in a fresh interpreter that runs the source
(``RPCBALANCER_NO_EXTENSIONS``: compiled functions are invisible to a profiler), against
simulated nodes: three in the default group, two hivemind-like ones behind a route.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, random, sys, time
    import orjson
    import rpcbalancer
    from rpcbalancer.balancer import Balancer
    from rpcbalancer.config import from_mapping
    from rpcbalancer.messages import HttpRequest
    from rpcbalancer.proxy.gateway import Gateway
    from rpcbalancer.sim import Behaviour, FakeNode

    assert rpcbalancer.build() == "interpreted"
    WAY = ("proxy/", "upstream/")

    def module(frame):
        name = frame.f_code.co_filename
        return name.split("/rpcbalancer/", 1)[1][:-3] if "/rpcbalancer/" in name else None

    class Tracer:
        def __init__(self):
            self.depth, self.passes, self.order, self.callbacks = {}, {}, [], []

        def __call__(self, frame, event, arg):
            mine = module(frame)
            if mine is None or mine.startswith("sim/"):
                return
            if event == "call":
                if self.depth.get(mine, 0) == 0:
                    self.passes[mine] = self.passes.get(mine, 0) + 1
                    if mine.startswith(WAY) and mine not in self.order:
                        self.order.append(mine)
                    caller = frame.f_back and module(frame.f_back)
                    if mine.startswith(WAY) and caller and not caller.startswith(WAY):
                        self.callbacks.append(f"{caller} -> {mine}.{frame.f_code.co_name}")
                self.depth[mine] = self.depth.get(mine, 0) + 1
            elif event == "return":
                self.depth[mine] = self.depth.get(mine, 0) - 1

        def report(self):
            return {"passes": self.passes, "order": self.order, "callbacks": self.callbacks}

    async def main():
        chain = [FakeNode(f"c{i}", Behaviour(latency=0.002), seed=i) for i in range(3)]
        social = [FakeNode(f"h{i}", Behaviour(latency=0.02), chain="hivemind") for i in range(2)]
        for node in chain + social:
            await node.start()
        config = from_mapping(
            {
                "nodes": [n.url for n in chain],
                "upstreams": {"hivemind": {"nodes": [n.url for n in social], "probe": "passive"}},
                "routes": {"bridge": "hivemind"},
                "store": "none",
                "access_log": {"enabled": False},
            },
            env={},
        )
        async with Balancer(config, rng=random.Random(7)) as balancer:
            gateway = Gateway(balancer)

            async def post(doc):
                done = asyncio.get_running_loop().create_future()
                gateway.serve(HttpRequest("POST", "/", body=orjson.dumps(doc), peer="127.0.0.1"),
                              done.set_result)
                return await done

            for i in range(4):  # the nodes measured, the plan of the method made
                await post({"jsonrpc": "2.0", "method": "bridge.get_post", "id": i,
                            "params": {"author": "a", "permlink": f"warm-{i}"}})
            call = {"jsonrpc": "2.0", "method": "bridge.get_post", "id": 9,
                    "params": {"author": "a", "permlink": "traced"}}
            body = orjson.dumps(call)
            done = asyncio.get_running_loop().create_future()
            down, back = Tracer(), Tracer()
            sys.setprofile(down)
            gateway.serve(HttpRequest("POST", "/", body=body, peer="127.0.0.1"), done.set_result)
            sys.setprofile(None)
            sys.setprofile(back)
            response = await done
            sys.setprofile(None)
            headers = dict(response.headers)
            print(json.dumps({"down": down.report(), "back": back.report(),
                              "status": response.status, "cache": headers.get("x-cache"),
                              "upstream": headers.get("x-rpc-upstream")}))
        for node in chain + social:
            await node.stop()

    asyncio.run(main())
    """
)


def trace() -> dict[str, object]:
    env = {**os.environ, "RPCBALANCER_NO_EXTENSIONS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_routed_cached_missed_call_passes_each_module_once_down_and_once_back() -> None:
    result = trace()
    assert (result["status"], result["cache"], result["upstream"]) == (200, "miss", "hivemind")
    down, back = result["down"], result["back"]
    assert isinstance(down, dict) and isinstance(back, dict)
    assert down["order"] == [
        "proxy/gateway",
        "proxy/admission",
        "proxy/context",
        "proxy/plan",
        "proxy/routes",
        "proxy/lookup",
        "proxy/group",
        "proxy/coalesce",
        "proxy/forward",
        "proxy/request",
        "proxy/router",
        "proxy/forwarding",
        "upstream/pool",
        "upstream/wire",
        "upstream/connection",
    ]
    assert back["order"] == [
        "upstream/connection",
        "upstream/wire",
        "upstream/pool",
        "proxy/forwarding",
        "proxy/coalesce",
        "proxy/gateway",
        "proxy/answer",
        "proxy/accounting",
        "proxy/learn",
        "proxy/group",
    ]
    for leg in (down, back):
        way = {m: n for m, n in leg["passes"].items() if m.startswith(("proxy/", "upstream/"))}
        assert all(n == 1 for n in way.values()), way  # entered, left, never entered again
        assert leg["callbacks"] == []  # nothing the way consults calls back into it
    # What the way consults is read, not driven: the policy looks at each node once.
    assert down["passes"]["fleet/policies/fastest"] == 1
