"""The states of a forwarded request, and the one table of what may follow what.

As h11 keeps its connection's states (``_state.py``), every move of a
:class:`~.forwarding.Forwarding` goes through :data:`TRANSITIONS`: an event the table does not
allow in the current state is a bug and raises at once (:class:`BadTransition`), rather than
leaving a request in a state nobody expects. The table, drawn::

    PICKING --try--> TRYING --hedge--> HEDGED --one_left--> TRYING
       |  \\            |  \\               \\
       |   race         |   retry --> PICKING   end --> DONE
       |    \\           end --> DONE
       |     RACING --try--> TRYING, --end--> DONE
       queue --> QUEUED --turn--> PICKING, --end--> DONE
       end --> DONE                     (cancel, from any state not over: CANCELLED)

States and events are plain integers (``Final``: compiled, they are constants), with their
names in :data:`STATES` and :data:`EVENTS` for messages and views.
"""

from __future__ import annotations

from typing import Final

# The states (plain integers: the hot path reads them a few times per request).
PICKING: Final = 0
"""Between tries: the next one is being chosen."""
QUEUED: Final = 1
"""Every usable node is at its ``node_concurrency`` cap: waiting in line for a slot."""
RACING: Final = 2
"""The race strategy's pings are out."""
TRYING: Final = 3
"""One try is out (its hedge may come)."""
HEDGED: Final = 4
"""Two tries are out: the first good answer wins."""
DONE: Final = 5
"""Answered or failed: ``done`` was called."""
CANCELLED: Final = 6
"""Nobody waits for the answer any more."""
STATES: Final = ("picking", "queued", "racing", "trying", "hedged", "done", "cancelled")

# The events that move a forwarding on.
TRY: Final = 0
"""A node was picked and its try starts."""
RACE: Final = 1
"""The race strategy pings every usable node first."""
QUEUE: Final = 2
"""Every usable node is at its cap: wait in line."""
TURN: Final = 3
"""A slot came free (or the line moved): pick again."""
HEDGE: Final = 4
"""The first try is slow and the budget pays (or a transaction fans out to two nodes at
once): a second try starts beside it."""
ONE_LEFT: Final = 5
"""One of two tries ended without the answer: the other may still give it."""
RETRY: Final = 6
"""The try failed, or answered ``null`` where another node may know: pick again."""
END: Final = 7
"""Answered, or given up (no node, try, time or budget left)."""
CANCEL: Final = 8
"""Nobody waits any more."""
EVENTS: Final = ("try", "race", "queue", "turn", "hedge", "one_left", "retry", "end", "cancel")

TRANSITIONS: Final[dict[int, dict[int, int]]] = {
    PICKING: {TRY: TRYING, RACE: RACING, QUEUE: QUEUED, END: DONE, CANCEL: CANCELLED},
    RACING: {TRY: TRYING, END: DONE, CANCEL: CANCELLED},
    QUEUED: {TURN: PICKING, END: DONE, CANCEL: CANCELLED},
    TRYING: {HEDGE: HEDGED, RETRY: PICKING, END: DONE, CANCEL: CANCELLED},
    HEDGED: {ONE_LEFT: TRYING, END: DONE, CANCEL: CANCELLED},
    DONE: {},
    CANCELLED: {},
}
"""What each event leads to, per state; anything else is a bug (:class:`BadTransition`)."""


class BadTransition(Exception):
    """An event the transition table does not allow in the forwarding's state."""
