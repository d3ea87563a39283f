"""What the views and the metrics read of a running balancer, as a protocol: the composition
root (:class:`~rpcbalancer.balancer.Balancer`) satisfies it, and nothing here imports it."""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..cache import AnswerCache
    from ..config import Config
    from ..fleet.fleet import FleetSet
    from ..fleet.policies import BasePolicy
    from ..health.canary import StoreView
    from ..health.chains import Chain
    from ..health.store import HealthStore
    from .counters import Rates, Stats


class Observed(Protocol):
    @property
    def fleet(self) -> FleetSet: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def chain(self) -> Chain: ...

    @property
    def policy(self) -> BasePolicy:
        """The configured strategy."""
        ...

    @property
    def routing(self) -> BasePolicy:
        """The strategy routing now (on Lambda, the race until the canary's records come)."""
        ...

    @property
    def store(self) -> HealthStore | None: ...

    @property
    def view(self) -> StoreView | None: ...

    @property
    def stats(self) -> Stats: ...

    @property
    def writes(self) -> Sized | None:
        """The clients whose reads follow their latest broadcast (read-your-writes)."""
        ...

    @property
    def started_at(self) -> float: ...

    @property
    def config(self) -> Config: ...

    @property
    def rates(self) -> Rates | None:
        """DoctorLai's requests per second (``compat: doctorlai``)."""
        ...

    @property
    def answer_cache(self) -> AnswerCache | None: ...

    @property
    def subscriptions_view(self) -> list[dict[str, Any]]:
        """The subscription topics and the nodes carrying them."""
        ...

    @property
    def floors_view(self) -> list[dict[str, Any]]:
        """Each group's held head, for status documents and metrics."""
        ...

    @property
    def names_view(self) -> dict[str, dict[str, Any]]:
        """The node host names' resolved addresses, for status documents."""
        ...

    @property
    def routes_view(self) -> list[dict[str, Any]]:
        """The configured routes and the groups, for status documents."""
        ...
