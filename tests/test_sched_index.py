"""The schedulers' trees (schedulers/_index.py) give the kernel walk's answer.

Large services answer lc, wlc, sed, nq, fo, ovf, twos and the locality
schedulers' wlc fallback and is_overloaded from a tree instead of walking
every dest. Random histories of dest additions, deletions, edits and
connection changes (bind, unbind, active <-> inactive, thresholds moving the
overload mark) are applied, and after each step the tree's answer must be the
walk's, the very dest, ties included.
"""

import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lvs.flags import IP_VS_CONN_F_MASQ, IP_VS_DEST_F_AVAILABLE  # noqa: E402
from lvs.registry import scheduler_class  # noqa: E402
from lvs.service import Dest, Service  # noqa: E402
from schedulers import _index  # noqa: E402
from helpers import Pkt  # noqa: E402

PURE = ("lc", "wlc", "sed", "nq", "fo", "ovf")

ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 4), st.integers(0, 6)),   # weight, u_threshold
    st.tuples(st.just("del"), st.integers(0, 999)),
    st.tuples(st.just("edit"), st.integers(0, 999), st.integers(0, 4), st.integers(0, 6)),
    st.tuples(st.just("bind"), st.integers(0, 999), st.booleans()),     # inactive?
    st.tuples(st.just("unbind"), st.integers(0, 999)),
    st.tuples(st.just("flip"), st.integers(0, 999)),
), min_size=1, max_size=80)


class History:
    """One service, its dests and the connections bound to them."""

    def __init__(self, name):
        self.svc = Service(6, bytes([198, 51, 100, 1]), 80)
        self.sched = scheduler_class(name)(self.svc)
        self.conns = []          # [dest, inactive]
        self.serial = 0

    def apply(self, op):
        svc, kind = self.svc, op[0]
        if kind == "add":
            self.serial += 1
            dest = Dest(svc, bytes([192, 0, 2, self.serial % 250 + 1]), self.serial)
            dest.update(op[1], IP_VS_CONN_F_MASQ, op[2], 0, add=True)
            svc.destinations.insert(0, dest)
            self.sched.add_dest(svc, dest)
            return
        if kind in ("del", "edit"):
            if not svc.destinations:
                return
            dest = svc.destinations[op[1] % len(svc.destinations)]
            if kind == "del":
                # as lvs/tables.py unlinks a dest: unavailable at once, then gone
                dest.flags &= ~IP_VS_DEST_F_AVAILABLE
                if dest.watch is not None:
                    dest.watch(dest)
                svc.destinations.remove(dest)
                self.sched.del_dest(svc, dest)
            else:
                dest.update(op[2], IP_VS_CONN_F_MASQ, op[3], 0)
                self.sched.upd_dest(svc, dest)
            return
        if kind == "bind":
            if svc.destinations:
                dest = svc.destinations[op[1] % len(svc.destinations)]
                dest.bind(False, op[2])
                self.conns.append([dest, op[2]])
            return
        if not self.conns:
            return
        conn = self.conns[op[1] % len(self.conns)]
        if kind == "unbind":
            conn[0].unbind(False, conn[1])
            self.conns.remove(conn)
        elif conn[1]:
            conn[0].to_active()
            conn[1] = False
        else:
            conn[0].to_inactive()
            conn[1] = True


def walk_and_tree(fn):
    """fn() answered by the kernel's walk, then by the tree."""
    limit = _index.SCAN_LIMIT
    try:
        _index.SCAN_LIMIT = 1 << 30
        walked = fn()
        _index.SCAN_LIMIT = 0
        return walked, fn()
    finally:
        _index.SCAN_LIMIT = limit


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PURE), ops)
def test_tree_choice_is_the_walks(name, history):
    h = History(name)
    for op in history:
        h.apply(op)
        walked, treed = walk_and_tree(lambda: h.sched.schedule(h.svc, None, 0.0))
        assert walked is treed, (name, op)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_twos_tree_draws_the_walks_choice(history):
    h = History("twos")
    for op in history:
        h.apply(op)
        draws = h.sched.draws.count

        def choose():
            h.sched.draws.count = draws    # both see the same random words
            return h.sched.schedule(h.svc, None, 0.0)
        walked, treed = walk_and_tree(choose)
        assert walked is treed, op


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(("lblc", "lblcr")), ops)
def test_locality_fallback_and_overload_from_the_tree(name, history):
    h = History(name)
    for op in history:
        h.apply(op)
        walked, treed = walk_and_tree(lambda: h.sched.wlc_choice(h.svc))
        assert walked is treed
        for dest in h.svc.destinations:
            walked, treed = walk_and_tree(lambda: h.sched.overloaded(dest, h.svc))
            assert walked == treed


busy = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 4), st.integers(0, 6)),
    st.tuples(st.just("add"), st.integers(0, 4), st.integers(0, 6)),
    st.tuples(st.just("bind"), st.integers(0, 999), st.booleans()),
    st.tuples(st.just("unbind"), st.integers(0, 999)),
    st.tuples(st.just("edit"), st.integers(0, 999), st.integers(0, 4), st.integers(0, 6)),
    st.tuples(st.just("del"), st.integers(0, 999)),
), min_size=1, max_size=80)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(busy, st.lists(st.just(0) | st.integers(0, 2), min_size=1, max_size=10))
def test_lblcr_sets_answer_from_their_trees(history, daddrs):
    """Two lblcr schedulers see the same dests: one walks its sets, one keeps
    every set of more than one member as a tree. Same choices, step by step."""
    h = History("lblcr")
    walker = scheduler_class("lblcr")(h.svc)
    limit = _index.SCAN_LIMIT
    try:
        for i, op in enumerate(history):
            h.apply(op)
            pkt = Pkt(daddr=bytes([198, 51, 100, 200 + daddrs[i % len(daddrs)]]))
            _index.SCAN_LIMIT = 1 << 30
            walked = walker.schedule(h.svc, pkt, float(i))
            _index.SCAN_LIMIT = 0
            treed = h.sched.schedule(h.svc, pkt, float(i))
            assert walked is treed, op
            # a busy set: the chosen dest takes a connection, as the engine would bind it
            if treed is not None:
                h.apply(("bind", h.svc.destinations.index(treed), False))
    finally:
        _index.SCAN_LIMIT = limit


def test_a_scheduler_switch_releases_the_dests():
    h = History("wlc")
    for _ in range(40):
        h.apply(("add", 1, 0))
    _index.SCAN_LIMIT, limit = 0, _index.SCAN_LIMIT
    try:
        h.sched.schedule(h.svc, None, 0.0)
        assert all(d.watch is not None for d in h.svc.destinations)
        h.sched.done_service(h.svc)
        assert all(d.watch is None for d in h.svc.destinations)
    finally:
        _index.SCAN_LIMIT = limit
