"""Fork choice (fleet/forks.py): a node whose head's hash is not the majority's is excluded
until it is back on the majority's chain."""

from __future__ import annotations

from rpcbalancer.fleet.fleet import Fleet

from .helpers import fleet, probed


def chain(number: int, fork: str = "") -> str:
    """The hash of block ``number`` on the canonical chain, or on a fork named ``fork``."""
    return f"0x{fork or 'c'}{number:06x}"


def probe_all(f: Fleet, heads: dict[int, tuple[int, str]], at: float = 0.0) -> None:
    """Probe nodes by index at (height, fork name): each reports its head and parent."""
    for index, (head, fork) in heads.items():
        probed(
            f.nodes[index], at=at, head=head, hash=chain(head, fork), parent=chain(head - 1, fork)
        )


def kinds(f: Fleet) -> list[str | None]:
    best = f.best_head()
    return [(e.kind if (e := f.excluded(n, 1.0, best)) else None) for n in f.nodes]


def test_a_node_with_another_hash_than_the_majority_at_its_head_is_forked() -> None:
    f = fleet(3)
    probe_all(f, {0: (100, ""), 1: (100, ""), 2: (100, "")})
    assert kinds(f) == [None, None, None]
    probe_all(f, {0: (101, ""), 1: (101, ""), 2: (101, "f")})
    assert kinds(f) == [None, None, "forked"]
    reason = f.exclusion(f.nodes[2], 1.0)
    assert reason is not None and "on a fork: its block 101" in reason and "2 of the 3" in reason
    assert f.forks.forks == 1
    # it stays out while on its fork, ahead or not (a fork ahead makes no one lag)
    probe_all(f, {2: (104, "f")})
    assert f.best_head() == 101
    assert kinds(f)[2] == "forked"
    probe_all(f, {0: (104, ""), 1: (104, "")})
    assert kinds(f) == [None, None, "forked"]
    # it reorganises onto the majority's chain: back at once
    probe_all(f, {2: (104, "")})
    assert kinds(f) == [None, None, None]
    assert f.forks.forks == 1


def test_a_tie_or_a_lone_vote_decides_nothing() -> None:
    f = fleet(2)
    probe_all(f, {0: (50, ""), 1: (50, "f")})
    assert kinds(f) == [None, None]  # one against one: which is the chain is not known
    g = fleet(3)
    probe_all(g, {0: (50, ""), 1: (50, ""), 2: (50, "f")})
    assert kinds(g)[2] == "forked"
    probe_all(g, {2: (52, "f")})  # alone at its new head: still forked until others vote
    assert kinds(g)[2] == "forked"


def test_the_hash_of_a_node_that_passed_a_lower_head_is_asked_for() -> None:
    f = fleet(3)
    probe_all(f, {0: (200, ""), 1: (200, ""), 2: (197, "f")})
    # nobody else's hash is known at 197: the nodes ahead of it are asked for theirs
    wanted = f.forks.wanted(f.nodes)
    assert sorted((n.index, h) for n, h in wanted) == [(0, 197), (1, 197)]
    assert kinds(f)[2] is None  # its own vote alone: not judged yet
    for node, height in wanted:
        f.forks.record(node, height, chain(height), f.nodes)
    assert kinds(f)[2] == "forked"
    assert f.forks.wanted(f.nodes) == []


def test_a_node_that_reorganised_is_judged_on_its_new_chain_only() -> None:
    f = fleet(3)
    probe_all(f, {0: (10, ""), 1: (10, ""), 2: (10, "f")})
    assert kinds(f)[2] == "forked"
    # it reorganised to a shorter, canonical chain: its fork's blocks above are forgotten
    probe_all(f, {2: (9, "")})
    assert f.forks.hashes[10].get(f.nodes[2].key) is None
    for node, height in f.forks.wanted(f.nodes):
        f.forks.record(node, height, chain(height), f.nodes)
    assert kinds(f)[2] is None


def test_chains_without_hashes_are_not_judged() -> None:
    f = fleet(3)
    for node in f.nodes:
        probed(node, head=7)
    assert kinds(f) == [None, None, None]
    assert f.forks.hashes == {}


def test_a_node_ahead_of_all_is_asked_for_its_block_where_the_others_stand() -> None:
    f = fleet(3)
    probe_all(f, {0: (100, ""), 1: (100, "")})
    # node 2 is two blocks ahead, on a fork that began at block 100
    probed(f.nodes[2], head=102, hash=chain(102, "f"), parent=chain(101, "f"))
    assert kinds(f)[2] is None and f.best_head() == 102  # nothing to compare with yet
    wanted = f.forks.wanted(f.nodes)
    assert [(n.index, h) for n, h in wanted] == [(2, 100)]
    f.forks.record(f.nodes[2], 100, chain(100, "f"), f.nodes)
    assert kinds(f)[2] == "forked"
    assert f.best_head() == 100  # its head does not count
    assert f.forks.wanted(f.nodes) == []


def test_a_node_ahead_on_the_chain_stays_in() -> None:
    f = fleet(3)
    probe_all(f, {0: (100, ""), 1: (100, ""), 2: (102, "")})
    ((node, height),) = f.forks.wanted(f.nodes)
    f.forks.record(node, height, chain(height), f.nodes)
    assert kinds(f) == [None, None, None] and f.best_head() == 102
    # a fork that began above where the others stand cannot be told from a fast node
    g = fleet(3)
    probe_all(g, {0: (100, ""), 1: (100, ""), 2: (103, "f")})
    ((node, height),) = g.forks.wanted(g.nodes)
    g.forks.record(node, height, chain(height), g.nodes)  # its block 100 is the chain's
    assert kinds(g)[2] is None
    probe_all(g, {0: (102, ""), 1: (102, "")})  # once they reach its fork, it is out
    assert kinds(g)[2] == "forked"  # (its parent, 102, read with its head, is outvoted)
