"""Overload: what one worker takes on, and the fast refusal of the rest.

A worker that is sent more than it can serve must stay useful: answer what it can, refuse the
rest at once and clearly, and never build a queue that grows without limit. Two signals, both
of this process:

* **Queue time.** A request that arrives while the event loop is busy waits, unread, until
  the loop comes round to its socket; how long is the loop's lag, read by a timer that asks
  to run every :data:`TICK` seconds and notes how late it runs. When the lag has stayed above
  ``max_queue_time`` for a whole ``interval`` (a standing queue, not a burst: CoDel's rule),
  the worker sheds: it admits only a share of the new requests, evenly spread, and refuses
  the rest. The share is steered by each reading (increase by :data:`STEP` while on time,
  decrease by :data:`BACK_OFF` while late: the rule TCP steers its window by), so it settles
  where the admitted requests are what the worker can serve without a queue; when it is
  back to all of them and the loop is on time, the shed is over. Refusing all until the
  loop is on time again would swing between an empty queue and a full one. A late reading
  backs off once for each ``max_queue_time`` of lag it shows: readings come once a turn of
  the loop, so a late loop reads less often than one on time, and a back-off per reading
  would let the share rise faster than it falls.
* **Concurrency.** Requests read and not yet answered (waiting for a node, mostly): at
  ``max_inflight`` the next is refused. It bounds the memory a stalled fleet can pin.

Only ``POST`` requests (the JSON-RPC calls) are subject to it: health checks, ``/status`` and
``/metrics`` are answered however busy the worker is, so that it can be seen. A refusal is
made before the request is read as JSON-RPC, with an answer built once: HTTP 503 with
``Retry-After`` and a JSON-RPC error whose ``id`` is null (the request was not parsed). That
is what makes it cheap; cheaper still, a request that will be refused and came whole in one
read (one ``POST`` with its body, as clients send it) is not parsed as HTTP either, only
framed (:meth:`.H1Server.refuse_unread`). Requests already admitted are answered as usual.
The counts are in ``/status.json`` (``balancer.overload``) and ``/metrics``
(``rpcbalancer_overload_*``).
"""

from __future__ import annotations

import asyncio

from ..config import OverloadConfig
from ..messages import HttpResponse, error_response

TICK = 0.01
"""Seconds between the lag timer's runs (when the loop is on time)."""
STEP = 0.02
"""What the admitted share grows by at each reading on time, while shedding."""
BACK_OFF = 0.9
"""What the admitted share is multiplied by at each late reading, while shedding."""
FLOOR = 0.01
"""The least share admitted: a worker never refuses everything."""


class Guard:
    """One worker's admission by load: :meth:`admit` before each request is handled."""

    def __init__(self, config: OverloadConfig, counts: dict[str, int]) -> None:
        self.inflight = 0
        """Requests admitted and not yet answered (the server keeps this count)."""
        self.shedding = False
        self.share = 1.0
        """The share of new requests admitted while shedding."""
        self._credit = 0.0
        self.lag = 0.0
        """The loop's latest lag (seconds)."""
        self._above_since: float | None = None
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.counts = counts
        self.configure(config, counts)

    def __repr__(self) -> str:
        return f"<Guard inflight={self.inflight} shedding={self.shedding} lag={self.lag:.4f}>"

    def configure(self, config: OverloadConfig, counts: dict[str, int]) -> None:
        """Take a (reloaded) configuration, and the counters to count into."""
        self.max_inflight = config.max_inflight or 1 << 62
        self.max_queue_time = config.max_queue_time
        self.interval = config.interval
        if counts is not self.counts:
            for key, value in self.counts.items():
                counts[key] = counts.get(key, 0) + value
            self.counts = counts
        retry = str(config.retry_after)
        self.refusal = error_response(
            "busy",
            f"Overloaded: this server is answering all it can; retry in {retry} s",
            headers=(("retry-after", retry),),
        )
        if not self.max_queue_time:
            self.shedding, self.share, self._above_since = False, 1.0, None

    # -- the decision, per request ---------------------------------------------------------

    def admit(self) -> HttpResponse | None:
        """None: go on (counted in :attr:`inflight` until the server calls :meth:`done`);
        else the refusal to write."""
        if self.shedding:
            credit = self._credit + self.share  # admits `share` of the requests, evenly
            if credit < 1.0:
                self._credit = credit
                self.counts["refused_queue"] = self.counts.get("refused_queue", 0) + 1
                return self.refusal
            self._credit = credit - 1.0
        if self.inflight >= self.max_inflight:
            self.counts["refused_inflight"] = self.counts.get("refused_inflight", 0) + 1
            return self.refusal
        self.inflight += 1
        return None

    def refuses_next(self) -> bool:
        """Whether :meth:`admit` would refuse the next request (it changes nothing: the
        server asks before it parses a request, to refuse it unparsed)."""
        if self.shedding and self._credit + self.share < 1.0:
            return True
        return self.inflight >= self.max_inflight

    def done(self) -> None:
        """An admitted request is answered, or abandoned."""
        self.inflight -= 1

    # -- the loop's lag ------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due = loop.time() + TICK
        self._timer = loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        self.observe(now, now - self._due)
        counts = self.counts  # the gauges, for /status and /metrics
        counts["inflight"] = self.inflight
        counts["shedding"] = int(self.shedding)
        self._due = now + TICK
        self._timer = loop.call_at(self._due, self._tick)

    def observe(self, now: float, lag: float) -> None:
        """One reading of the loop's lag at ``now``: shed once it has stayed above
        ``max_queue_time`` for ``interval``; while shedding, steer the share admitted."""
        self.lag = lag
        limit = self.max_queue_time
        if not limit:
            self.shedding, self.share, self._above_since = False, 1.0, None
            return
        if lag < limit:
            self._above_since = None
            if self.shedding:
                self.share = min(1.0, self.share + STEP)
                if self.share >= 1.0:
                    self.shedding = False
            return
        if self.shedding:
            self.share = max(FLOOR, self.share * BACK_OFF ** (lag / limit))
            return
        if self._above_since is None:
            self._above_since = now - lag  # it has been late since the tick was due
        if now - self._above_since >= self.interval:
            self.shedding = True
            self.share = BACK_OFF
            self._credit = 0.0
            self.counts["sheds"] = self.counts.get("sheds", 0) + 1
