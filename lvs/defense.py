"""The defense strategies (ip_vs_ctl.c update_defense_level, ip_vs_conn.c
ip_vs_random_dropentry, ip_vs.h ip_vs_todrop). A mixin of Engine (lvs/engine.py).

The kernel measures memory pressure as free pages against `amemthresh`. A userspace
table has no such measure, so pylvs measures the table's free room instead: with a
bound (`Engine(max_conns=N)`, `lvs daemon/replay --max-conns N`) the "available
memory" is N minus the entries held (connections and templates), counted in
entries, and there is pressure when it is below `amemthresh` (default 1024: set it
to the headroom you want kept). Without a bound there is never pressure, so modes
1 and 2 stay idle and only the "always" modes (3) act, as on a kernel with memory
to spare.

Once a second (DEFENSE_TIMER_PERIOD), and at every write of one of the three
mode sysctls that changes it, update_defense_level() runs:
  drop_entry   1 -> 2 under pressure, 2 -> 1 when it ends; at 2 or 3 each second
               ends a random 1/32 of the hash buckets' half-open entries
               (SYN_RECV, SYNACK), unassured templates, and idle ones (> 60 s
               since their last packet, with a few packets: todrop_entry's rates)
  drop_packet  1 -> 2 and back; at 2 one new connection in
               amemthresh / (amemthresh - available) is dropped, at 3 one in
               am_droprate (counted "drop_packet")
  secure_tcp   1 -> 2 and back; at 2 or 3 TCP follows the stricter state table
               (proto_tcp.TCP_STATES_DOS)
"""

import random
import struct
import zlib

from . import proto_tcp
from .conntab import IP_VS_CTPL_S_ASSURED
from .flags import IP_VS_CONN_F_ONE_PACKET, IP_VS_SVC_F_ONEPACKET, IPPROTO_TCP

DEFENSE_TIMER_PERIOD = 1.0
CONN_TAB_BITS = 12                  # CONFIG_IP_VS_TAB_BITS: 4096 hash buckets
CONN_TAB_MASK = (1 << CONN_TAB_BITS) - 1
DROPENTRY_SCAN = (1 << CONN_TAB_BITS) >> 5   # buckets looked at each second
IDLE_BEFORE_DROP = 60.0             # todrop_entry leaves younger idleness alone
TODROP_RATE = (0, 1, 2, 3, 4, 5, 6, 7, 8)   # by in_pkts: 0 never, 1 always, n one in n


class Defense:
    """Engine's defense modes; state is per engine, as it is per netns in the kernel."""

    def _defense_init(self):
        self.dropentry = False      # ipvs->dropentry: the random drop runs each second
        self.drop_rate = 0          # ipvs->drop_rate, read by _todrop
        self._drop_counter = 0
        self.old_secure_tcp = 0
        self._todrop_counter = [0] * len(TODROP_RATE)
        self.dropped_entries = 0    # entries ended by the random drop
        self._next_defense = None   # set with the clock's start (Timers)
        self._defense_rng = random.Random(self.seed ^ 0x64656665)
        self.config.defense_hook = self.update_defense_level
        self.update_defense_level()  # the modes the config was built with

    def availmem(self):
        """The table's free room in entries, or None when it has no bound."""
        limit = self.conntab.limit
        return None if limit is None else limit - len(self.conntab.conns)

    def update_defense_level(self):
        """update_defense_level: the three modes against the pressure now."""
        config = self.config
        sysctl = config.__dict__
        availmem = self.availmem()
        amemthresh = config.amemthresh
        nomem = availmem is not None and availmem < amemthresh

        mode = config.drop_entry
        if mode == 3:
            self.dropentry = True
        elif mode in (1, 2):
            self.dropentry = nomem
            sysctl["drop_entry"] = 2 if nomem else 1
        else:
            self.dropentry = False

        mode = config.drop_packet
        if mode == 3:
            self.drop_rate = config.am_droprate
        elif mode in (1, 2):
            if nomem:
                self.drop_rate = self._drop_counter = amemthresh // (amemthresh - availmem)
            else:
                self.drop_rate = 0
            sysctl["drop_packet"] = 2 if nomem else 1
        else:
            self.drop_rate = 0

        mode = config.secure_tcp
        old = self.old_secure_tcp
        to_change = False
        if mode == 3:
            to_change = old < 2
        elif mode in (1, 2):
            to_change = (old < 2) if nomem else (old >= 2)
            sysctl["secure_tcp"] = 2 if nomem else 1
        else:
            to_change = old >= 2
        self.old_secure_tcp = config.secure_tcp
        if to_change:
            # ip_vs_protocol_timeout_change -> tcp_timeout_change: the state table.
            config.secure_tcp_on = config.secure_tcp > 1
            config.generation += 1

    def defense_state(self):
        """What `lvs daemon --stats` shows under "defense"."""
        availmem = self.availmem()
        return {
            "availmem": availmem,
            "nomem": availmem is not None and availmem < self.config.amemthresh,
            "dropentry": self.dropentry,
            "drop_rate": self.drop_rate,
            "secure_tcp_dos": self.config.secure_tcp_on,
            "dropped_entries": self.dropped_entries,
        }

    def _todrop(self):
        """ip_vs_todrop: drop one new connection in drop_rate."""
        if not self.drop_rate:
            return False
        self._drop_counter -= 1
        if self._drop_counter > 0:
            return False
        self._drop_counter = self.drop_rate
        return True

    def _defense_timer(self, now):
        """defense_work_handler, once a second."""
        self.update_defense_level()
        if self.dropentry:
            self._random_dropentry(now)

    def _bucket(self, cp):
        """The hash bucket of an entry: the kernel hashes (protocol, caddr, cport)
        with a boot-time key; here the engine's seed is the key."""
        data = cp.caddr + struct.pack("!HB", cp.cport, cp.protocol)
        return zlib.crc32(data, self.seed) & CONN_TAB_MASK

    def _random_dropentry(self, now):
        """ip_vs_random_dropentry: look at 1/32 of the buckets, drawn at random,
        each chain newest first, and end the entries the rules pick."""
        rng = self._defense_rng
        picks = [rng.getrandbits(32) & CONN_TAB_MASK for _ in range(DROPENTRY_SCAN)]
        wanted = set(picks)
        chains = {}
        for cp in self.conntab.conns.values():
            if cp.flags & IP_VS_CONN_F_ONE_PACKET:
                continue   # never hashed
            bucket = self._bucket(cp)
            if bucket in wanted:
                chains.setdefault(bucket, []).append(cp)
        for bucket in picks:
            for cp in reversed(chains.get(bucket, ())):
                if cp.dead or cp.n_control:
                    continue
                if cp.is_template:
                    svc = cp.dest.svc if cp.dest is not None else None
                    if svc is not None and svc.flags & IP_VS_SVC_F_ONEPACKET:
                        if not self._todrop_entry(cp, now):
                            continue
                    elif cp.state & IP_VS_CTPL_S_ASSURED:
                        continue
                elif cp.protocol == IPPROTO_TCP:
                    if cp.state == proto_tcp.ESTABLISHED:
                        if not self._todrop_entry(cp, now):
                            continue
                    elif cp.state not in (proto_tcp.SYN_RECV, proto_tcp.SYNACK):
                        continue
                elif not self._todrop_entry(cp, now):
                    continue
                self.dropped_entries += 1
                self._conn_del(cp, now)   # lvs/tables.py: ip_vs_conn_del

    def _todrop_entry(self, cp, now):
        """todrop_entry: idle 60 s or more, and 0..8 packets in, at its rate."""
        if now + cp.timeout < cp.expires + IDLE_BEFORE_DROP:
            return False
        i = cp.in_pkts
        if i > 8 or i < 0 or not TODROP_RATE[i]:
            return False
        counter = self._todrop_counter
        counter[i] -= 1
        if counter[i] > 0:
            return False
        counter[i] = TODROP_RATE[i]
        return True
