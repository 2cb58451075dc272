"""The kernel's dest walks answered without walking: a tournament tree.

lc, wlc, sed, nq, fo, ovf, twos and the locality schedulers walk every dest
of the service on every decision (list_for_each_entry_rcu over
svc->destinations). Each walk is a left-to-right fold: a running choice that
a later dest replaces only when strictly better, so ties keep the earlier
dest in kernel list order. A fold of that shape is associative, so it can be
kept as a segment tree over the list: a leaf per dest, each inner node the
fold of its two children (left wins ties), the root the walk's answer.

A dest reports its own changes (connection counts, weight, overload flag)
through `dest.watch`, which the index sets; one change re-folds one path,
O(log n). A change to the list itself (add, delete, a scheduler switch) only
marks the tree stale; it is rebuilt, O(n), before the next decision.

Small services keep the kernel's walk: below SCAN_LIMIT dests it is as quick
as the tree and needs no updates. tests/test_sched_index.py checks the tree
against the walk, tie-breaks included, over random histories.
"""

from lvs.flags import IP_VS_DEST_F_OVERLOAD

from ._hashing import is_overloaded, wlc_pick

SCAN_LIMIT = 32


class Tree:
    """One fold: leaf(dest) -> value, join(left, right) -> value, `empty` the
    value of a slot with no dest (the identity of join)."""

    __slots__ = ("leaf", "join", "empty", "nodes")

    def __init__(self, leaf, join, empty=None):
        self.leaf, self.join, self.empty = leaf, join, empty
        self.nodes = None


class DestIndex:
    """The trees one scheduler keeps over one service's dest list."""

    def __init__(self, *trees):
        self.trees = trees
        self.pos = None       # dest -> leaf slot; None: stale, rebuild first
        self.size = 0
        self.also = None      # called with every changed dest, in the tree or not

    def stale(self):
        """The dest list changed: rebuild before the next query."""
        self.pos = None

    def detach(self):
        for dest in self.pos or ():
            if dest.watch == self.changed:
                dest.watch = None
        self.pos = None

    def root(self, svc, k=0):
        if self.pos is None:
            self._build(svc)
        return self.trees[k].nodes[1]

    def tree(self, svc, k=0):
        """The whole node array of tree k (for descents); leaves start at .size."""
        if self.pos is None:
            self._build(svc)
        return self.trees[k].nodes

    def _build(self, svc):
        dests = svc.destinations
        size = 1
        while size < len(dests):
            size <<= 1
        self.size = size
        for t in self.trees:
            nodes = [t.empty] * (2 * size)
            leaf, join = t.leaf, t.join
            for i, dest in enumerate(dests):
                nodes[size + i] = leaf(dest)
            for i in range(size - 1, 0, -1):
                nodes[i] = join(nodes[2 * i], nodes[2 * i + 1])
            t.nodes = nodes
        self.pos = {dest: size + i for i, dest in enumerate(dests)}
        for dest in dests:
            dest.watch = self.changed

    def changed(self, dest):
        if self.also is not None:
            self.also(dest)
        pos = self.pos
        if pos is None:
            return
        i = pos.get(dest)
        if i is None:
            return  # left the service (trash): no longer in this tree
        for t in self.trees:
            t.nodes[i] = t.leaf(dest)
            refold(t.nodes, t.join, i)


def refold(nodes, join, i):
    """After leaf i of a tree changed: fold again every node above it."""
    i >>= 1
    while i:
        nodes[i] = join(nodes[2 * i], nodes[2 * i + 1])
        i >>= 1


def add(left, right):
    return left + right


class Indexed:
    """Scheduler mixin: keeps `self.index` (built by make_index()) in step with
    the dest list hooks. make_index() returns a DestIndex."""

    def make_index(self):
        raise NotImplementedError

    def sched_index(self):
        index = self.__dict__.get("index")
        if index is None:
            index = self.index = self.make_index()
        return index

    def add_dest(self, svc, dest):
        self.sched_index().stale()
        super().add_dest(svc, dest)

    def del_dest(self, svc, dest):
        self.sched_index().stale()
        super().del_dest(svc, dest)

    def upd_dest(self, svc, dest):
        self.sched_index().stale()
        super().upd_dest(svc, dest)

    def done_service(self, svc):
        self.sched_index().detach()
        super().done_service(svc)


# Leaves and joins the schedulers share.

def usable_leaf(dest):
    """The dest if neither overloaded nor weight 0 (what the walks skip), else None."""
    return dest if not dest.flags & IP_VS_DEST_F_OVERLOAD and dest.weight > 0 else None


def wlc_lighter(left, right):
    """ip_vs_wlc_schedule's step: right replaces left only when strictly lighter,
    loh * rw > roh * lw with overhead = active*256 + inactive."""
    if left is None:
        return right
    if right is None:
        return left
    loh = (left.activeconns << 8) + left.inactconns
    roh = (right.activeconns << 8) + right.inactconns
    return right if loh * right.weight > roh * left.weight else left


def wlc_tree():
    return Tree(usable_leaf, wlc_lighter)


def half_idle_tree():
    """lblc/lblcr is_overloaded's question: does any dest have activeconns*2 < weight?"""
    return Tree(lambda d: d.activeconns * 2 < d.weight, lambda a, b: a or b, False)


class LocalityIndexed(Indexed):
    """lblc and lblcr: the wlc walk of their fallback and is_overloaded's scan."""

    def make_index(self):
        return DestIndex(wlc_tree(), half_idle_tree())

    def wlc_choice(self, svc):
        if len(svc.destinations) <= SCAN_LIMIT:
            return wlc_pick(svc)
        return self.sched_index().root(svc, 0)

    def overloaded(self, dest, svc):
        """is_overloaded: busier than its weight while some dest is half idle."""
        if dest.activeconns <= dest.weight:
            return False
        if len(svc.destinations) <= SCAN_LIMIT:
            return is_overloaded(dest, svc)
        return self.sched_index().root(svc, 1)
