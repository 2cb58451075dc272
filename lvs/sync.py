"""Connection synchronisation on the engine (ip_vs_sync.c's logic; the wire
format is lvs/syncmsg.py, the sockets lvs/ports/mcast.py).

Master: after each packet from a client (and when a template outlives its
timer) the kernel asks ip_vs_sync_conn_needed whether the backups should hear
of the connection: in a state that matters (TCP ESTABLISHED, FIN_WAIT,
CLOSE, CLOSE_WAIT, TIME_WAIT; UDP and templates always), on a state change,
or at the packet counts `sync_threshold` names (the 3rd packet, then every
50th by default), or, with `sync_refresh_period`, when its timer moved by
that much (with `sync_retries` repeats); with `sync_persist_mode` the
connections of a persistent service are left to their template. The entry
goes into the current message; a full message is queued for sending (at most
`sync_qlen_max`), a partly filled one is sent 2 s after its first entry.
With `sync_ports` N (a power of two, read when the first daemon starts) a
master sends on N ports from the configured one up, each connection always
on the same one, and a backup listens on all N.
The engine never sends: the daemon takes the datagrams (sync_take) at
sync_deadline() and after each batch.

Backup: sync_receive() reads a datagram (syncmsg.decode) and installs each
entry as ip_vs_proc_conn does: an existing connection is updated (flags that
may change, state, timeout), a new one is created bound to this director's
own real server for the same service and server address -- no scheduler is
asked -- and forwarded by that server's method; without one it stays unbound
and is still forwarded by the method the master used, as the kernel does.

Time is kept in jiffies here (HZ 250, Debian's kernel), because the refresh
rule's arithmetic is the kernel's, low bits included.
"""

from collections import Counter

from . import proto_tcp, syncmsg
from .conntab import TableFull
from .flags import (IP_VS_CONN_F_FWD_MASK, IP_VS_CONN_F_INACTIVE, IP_VS_CONN_F_MASQ,
                    IP_VS_CONN_F_ONE_PACKET, IP_VS_CONN_F_TEMPLATE, IPPROTO_TCP, IPPROTO_UDP)
from .tables import HZ

# The TCP states ip_vs_sync_conn_needed syncs in.
SYNC_TCP_STATES = frozenset((proto_tcp.ESTABLISHED, proto_tcp.FIN_WAIT, proto_tcp.CLOSE,
                             proto_tcp.CLOSE_WAIT, proto_tcp.TIME_WAIT))
FLUSH_TIME = 2.0            # IPVS_SYNC_FLUSH_TIME: no entry waits longer in a buffer
SYNC_PORTS_MAX = 64         # IPVS_SYNC_PORTS_MAX
TEMPLATE_V0_TIMEOUT = 180.0  # a v0 message carries no timeout: templates get 3 minutes
MAX_TIMEOUT = (2 ** 63 - 1) // HZ        # MAX_SCHEDULE_TIMEOUT / HZ, in seconds


def jiffies(now):
    return int(now * HZ)


class MasterState:
    """A running master: per sending port (struct ipvs_master_sync_state, one per
    sync thread) its current message and the queue of full ones."""

    def __init__(self, cfg, ports):
        self.cfg = cfg
        self.bufs = [None] * ports
        self.queues = [[] for _ in range(ports)]


class Sync:
    """Engine's sync master and backup (a mixin of Engine, lvs/engine.py)."""

    def _sync_init(self):
        self.sync_daemons = {}     # "master"/"backup" -> settings (lvs/adm.py start_daemon)
        self.sync_master = None    # MasterState while a master runs
        self.sync_ports = 1        # sync threads (ports port, port+1 ...), fixed while a daemon runs
        self.sync_stats = Counter()
        self.sync_seq = {}         # connection -> (in_seq, out_seq) a master sent (ip_vs_seq)

    def sync_started(self, state):
        if len(self.sync_daemons) == 1:
            # start_sync_thread: the sync_ports sysctl counts when no daemon runs yet.
            self.sync_ports = min(max(self.config.sync_ports, 1), SYNC_PORTS_MAX)
        if state == "master":
            self.sync_master = MasterState(self.sync_daemons["master"], self.sync_ports)
            self.conntab.sync_clock = True
        self.generation += 1   # backup_only may now apply: the fast path starts again

    def sync_stopped(self, state):
        if state == "master":
            self.sync_master = None   # what was not sent yet goes, as stop_sync_thread frees it
        self.generation += 1

    def backup_only(self):
        """sysctl_backup_only: a backup that only syncs; IPVS takes no client packet
        (ip_vs_in_hook, ip_vs_forward_icmp) but still translates NAT replies (ip_vs_out_hook)."""
        return bool(self.config.backup_only) and "backup" in self.sync_daemons

    # ------------------------------------------------------------ master

    def sync_conn(self, cp, pkts):
        """ip_vs_sync_conn: tell the backups about cp (and its template) if it is time."""
        if self.config.sync_version == 0:
            return self._sync_conn_v0(cp, pkts)
        if not cp.flags & IP_VS_CONN_F_ONE_PACKET and self._sync_needed(cp, pkts):
            self._sync_add(cp, 1)
        while True:
            cp = cp.control
            if cp is None:
                return
            pkts = self._controller_pkts(cp)
            if self._sync_needed(cp, pkts):
                self._sync_add(cp, 1)

    def _sync_conn_v0(self, cp, pkts):
        if len(cp.caddr) == 16:
            return  # ip_vs_sync_conn_v0: version 0 carries IPv4 only
        if cp.flags & IP_VS_CONN_F_ONE_PACKET or not self._sync_needed(cp, pkts):
            return  # v0 leaves the template alone too
        self._sync_add(cp, 0)
        ct = cp.control
        if ct is not None:
            self.sync_conn(ct, self._controller_pkts(ct))

    def _controller_pkts(self, ct):
        if ct.flags & IP_VS_CONN_F_TEMPLATE:
            ct.in_pkts += 1
            return ct.in_pkts
        return self.config.sync_threshold[0]

    def _sync_needed(self, cp, pkts):
        """ip_vs_sync_conn_needed."""
        config = self.config
        # Set when a master runs (conntab), else the kernel's initial values.
        orig = getattr(cp, "sync_endtime", 0)
        now = jiffies(self.now)
        timeout = int(round(cp.timeout * HZ))
        n = (now + timeout) & ~3
        force = False
        if cp.flags & IP_VS_CONN_F_TEMPLATE:
            pass
        elif config.sync_persist_mode and _in_persistence(cp):
            return False
        elif cp.protocol == IPPROTO_TCP:
            if cp.state not in SYNC_TCP_STATES:
                return False
            force = cp.state != cp.old_state
            if force and cp.state != proto_tcp.ESTABLISHED:
                return self._sync_set(cp, n)
        refresh = config.sync_refresh_period * HZ
        if refresh > 0:
            diff = n - orig
            if abs(diff) < min(refresh, max(timeout >> 1, 10 * HZ)):
                retries = orig & 3
                if retries >= config.sync_retries:
                    return False
                if now < orig - timeout + (refresh >> 3):
                    return False
                n |= retries + 1
        threshold, period = config.sync_threshold
        if period > 0:
            if not cp.flags & IP_VS_CONN_F_TEMPLATE and pkts % period != threshold:
                return False
        elif not refresh and pkts != threshold:
            return False
        return self._sync_set(cp, n)

    @staticmethod
    def _sync_set(cp, n):
        cp.old_state = cp.state
        cp.sync_endtime = n
        return True

    def _sync_add(self, cp, version):
        """Add cp to the current message (ip_vs_sync_conn's second half)."""
        ms = self.sync_master
        if ms is None:
            return
        seq = self.sync_seq.get(cp, (None, None)) if self.sync_seq else (None, None)
        e = syncmsg.SyncEntry(cp.protocol, cp.flags, cp.state, cp.caddr, cp.cport, cp.vaddr,
                              cp.vport, cp.daddr, cp.dport, cp.fwmark, int(cp.timeout), *seq,
                              ipv6=len(cp.caddr) == 16)
        if version:
            data, n = syncmsg.encode_entry_v1(e), syncmsg.entry_len_v1(e)
        else:
            data, n = syncmsg.encode_entry_v0(e), syncmsg.entry_len_v0(e)
        # select_master_thread_id hashes the connection's address in memory; the
        # connection's creation number serves here (one connection, one port).
        tid = cp.seq & (len(ms.bufs) - 1)
        buf = ms.bufs[tid]
        if buf is not None and not buf.accepts(version, n):
            self._sync_queue(ms, tid)
            buf = None
        if buf is None:
            buf = ms.bufs[tid] = syncmsg.MessageBuffer(version, ms.cfg["syncid"], n,
                                                       ms.cfg["sync_maxlen"], self.now)
        buf.add(data)
        self.sync_stats["sync_entries_sent"] += 1

    def _sync_queue(self, ms, tid):
        """sb_queue_tail: a full message waits for the sender, if the queue has room."""
        if len(ms.queues[tid]) < self.config.sync_qlen_max:
            ms.queues[tid].append(ms.bufs[tid].message())
        else:
            self.sync_stats["sync_queue_full"] += 1
        ms.bufs[tid] = None

    def sync_deadline(self):
        """When a partly filled message is due (None: nothing waits)."""
        ms = self.sync_master
        if ms is None:
            return None
        if any(ms.queues):
            return self.now
        times = [b.firstuse + FLUSH_TIME for b in ms.bufs if b is not None]
        return min(times) if times else None

    def sync_take(self, now):
        """The datagrams to multicast now, as (port offset, datagram): the queued ones,
        and a current one once it is FLUSH_TIME old (next_sync_buff)."""
        ms = self.sync_master
        if ms is None:
            return []
        out = []
        for tid, queue in enumerate(ms.queues):
            out += [(tid, m) for m in queue]
            queue.clear()
            buf = ms.bufs[tid]
            if buf is not None and now - buf.firstuse >= FLUSH_TIME:
                out.append((tid, buf.message()))
                ms.bufs[tid] = None
        self.sync_stats["sync_messages_sent"] += len(out)
        return out

    # ------------------------------------------------------------ backup

    def sync_receive(self, data, now):
        """A datagram on the backup's socket (ip_vs_process_message)."""
        cfg = self.sync_daemons.get("backup")
        if cfg is None:
            return
        self._advance(now)
        stats = self.sync_stats
        stats["sync_messages_received"] += 1
        decoded = syncmsg.decode(data, cfg["syncid"])
        for reason in decoded.skipped:
            stats[reason] += 1
        if decoded.dropped:
            stats[decoded.dropped] += 1
        for e in decoded.entries:
            self._proc_conn(e, now)

    def _proc_conn(self, e, now):
        """ip_vs_proc_conn: add or update one connection or template."""
        tab = self.conntab
        flags = e.flags
        key = (e.protocol, e.caddr, e.cport, e.vaddr, e.vport)
        template = flags & IP_VS_CONN_F_TEMPLATE
        stats = self.sync_stats
        if not template:
            cp = tab.by_in.get(key)
            if cp is not None and (cp.dport != e.dport or cp.daddr != e.daddr):
                if flags & IP_VS_CONN_F_INACTIVE:
                    # The expiry of a connection already replaced here.
                    stats["sync_stale_ignored"] += 1
                    return
                tab.expire_now(cp, now)
                cp = None
        else:
            cp = tab.templates.get(key)
        if cp is not None:
            dest = cp.dest
            if (cp.flags ^ flags) & IP_VS_CONN_F_INACTIVE and not template and dest is not None:
                if flags & IP_VS_CONN_F_INACTIVE:
                    dest.to_inactive()
                else:
                    dest.to_active()
            upd = syncmsg.IP_VS_CONN_F_BACKUP_UPD_MASK
            cp.flags = (flags & upd) | (cp.flags & ~upd)
            if dest is None:
                dest = self._sync_find_dest(cp.protocol, cp.vaddr, cp.vport, cp.daddr, cp.dport,
                                            cp.fwmark, cp.flags)
                if dest is not None:
                    tab.bind_dest(cp, dest)
            if cp.fast is not None:
                self.fast.forget(cp)
            stats["sync_updated"] += 1
        else:
            dest = self._sync_find_dest(e.protocol, e.vaddr, e.vport, e.daddr, e.dport,
                                        e.fwmark, flags)
            try:
                cp = tab.new(e.protocol, e.caddr, e.cport, e.vaddr, e.vport, e.daddr, e.dport,
                             flags, dest, e.fwmark, now)
            except TableFull:
                stats["sync_table_full"] += 1   # "BACKUP, add new conn. failed"
                return
            stats["sync_installed" if dest is not None else "sync_installed_unbound"] += 1
        if e.in_seq is not None:
            # Kept and sent on as they came (pylvs adjusts no sequence numbers itself:
            # no FTP helper), for a kernel backup behind us.
            self.sync_seq[cp] = (e.in_seq, e.out_seq)
        cp.in_pkts = self.config.sync_threshold[0]
        cp.state = e.state
        cp.old_state = e.state
        if e.timeout:
            cp.timeout = float(min(e.timeout, MAX_TIMEOUT))
        elif not template and e.protocol == IPPROTO_TCP:
            cp.timeout = float(self.tcp_timeouts[e.state])
        elif not template and e.protocol == IPPROTO_UDP:
            cp.timeout = float(self.udp_timeout)
        else:
            cp.timeout = TEMPLATE_V0_TIMEOUT
        self._conn_put(cp)

    def _sync_find_dest(self, protocol, vaddr, vport, daddr, dport, fwmark, flags):
        """ip_vs_find_dest: this director's server for the service and address."""
        svc = self._service_by_mark(fwmark, protocol, vaddr, vport)
        if svc is None:
            return None
        port = dport
        if fwmark and flags & IP_VS_CONN_F_FWD_MASK != IP_VS_CONN_F_MASQ:
            port = 0
        dest = svc.find_dest(daddr, port)
        if dest is None:
            dest = svc.find_dest(daddr, port ^ dport)
        return dest


def _in_persistence(cp):
    ct = cp.control
    while ct is not None:
        if ct.flags & IP_VS_CONN_F_TEMPLATE:
            return True
        ct = ct.control
    return False
