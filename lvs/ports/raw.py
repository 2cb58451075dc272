"""AF_PACKET on one named interface: Ethernet frames in and out.

Receiving goes through a PACKET_MMAP ring (TPACKET_V2: one frame per slot,
handed over as soon as the kernel has written it, so a request/response
exchange waits on nothing; TPACKET_V3's block handover added a millisecond
or more per packet here). Where a ring cannot be set up, recvfrom() takes
its place. Sending is sendto() on the bound socket.

The socket is opened with protocol 0, which receives nothing, and only bound
to ETH_P_ALL on the interface once the ring is in place: otherwise frames
of every interface would race into the ring before bind(). Our own
transmissions are not looped back to us (PACKET_IGNORE_OUTGOING), and
frames for other hosts' MACs (PACKET_OTHERHOST: a bridge floods before it
learns) are skipped, as ip_rcv() skips them: only what the host's IP layer
would see reaches the loop.
"""

import errno
import fcntl
import mmap
import socket
import struct

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
TPACKET_V2 = 1
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
SIOCGIFINDEX = 0x8933
PACKET_OTHERHOST = 3
PACKET_ADD_MEMBERSHIP = 1
PACKET_DROP_MEMBERSHIP = 2
PACKET_MR_MULTICAST = 0
PACKET_OUTGOING = 4

# struct tpacket2_hdr: status, len, snaplen, mac, net, sec, nsec, vlan_tci, vlan_tpid
_HDR = struct.Struct("=IIIHHIIHH")
_STATUS = struct.Struct("=I")
_SLL_PKTTYPE = 32 + 10    # sockaddr_ll follows the 32-byte aligned header; pkttype at +10

RESYNC_AFTER = 100        # empty wakeups in a row before the ring is searched (_resync)
FRAME_SIZE = 2048         # one Ethernet frame of MTU 1500 and the ring's header, aligned
FRAME_COUNT = 1024        # frames in the ring (2 MiB)
BLOCK_SIZE = 1 << 16      # ring memory is allocated in blocks of whole frames


class PortGone(OSError):
    """The interface the port was bound to is gone (deleted, or made anew)."""


class RawPort:
    kind = "ether"

    def __init__(self, ifname, ring=True, frame_count=FRAME_COUNT, protocol=ETH_P_ALL, fanout=None,
                 bpf=None):
        """`protocol`: the EtherType to receive (ETH_P_ALL: every frame).
        `fanout`: a PACKET_FANOUT group id to join (lvs/fanout.py).
        `bpf`: a classic BPF program that frames must pass, attached before the socket
        is bound, so that nothing else ever arrives (lvs/fanout.py: nd_filter)."""
        self.name = ifname
        self.protocol = protocol
        self.counters = {"rx": 0, "tx": 0, "tx_errors": 0, "rx_ring_drops": 0, "rx_empty_wakeups": 0,
                         "rx_ring_resyncs": 0}
        self._empty_run = 0       # empty wakeups in a row (_resync)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.ring = None
        try:
            try:
                self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError:
                pass  # before Linux 4.20: the pkttype test below skips them
            if bpf is not None:
                from ..fanout import attach_filter
                attach_filter(self.sock, bpf)
            if ring:
                self._setup_ring(frame_count)
            self.ifindex = self._ifindex()
            self.sock.bind((ifname, protocol))
            if fanout is not None:
                from ..fanout import join
                join(self.sock, fanout)  # only a bound socket can join
            self.sock.setblocking(False)
        except Exception:
            self.close()
            raise
        self.mac = self.sock.getsockname()[4]

    @property
    def ring_mode(self):
        return "tpacket_v2" if self.ring is not None else "recvfrom"

    def _setup_ring(self, frame_count):
        frames_per_block = BLOCK_SIZE // FRAME_SIZE
        blocks = max(1, frame_count // frames_per_block)
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            req = struct.pack("=IIII", BLOCK_SIZE, blocks, FRAME_SIZE, blocks * frames_per_block)
            self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self.ring = mmap.mmap(self.sock.fileno(), BLOCK_SIZE * blocks,
                                  mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            self.ring = None  # no rings here: recvfrom() it is
            return
        self.frames = blocks * frames_per_block
        self.slot = 0

    def fileno(self):
        return self.sock.fileno()

    def _ifindex(self):
        ifr = struct.pack("16si", self.name.encode(), 0)
        return struct.unpack_from("16si", fcntl.ioctl(self.sock.fileno(), SIOCGIFINDEX, ifr))[1]

    def _woken_empty(self):
        """Readable with nothing to read: a socket error (the link went down or away)
        that would keep the selector returning at once. Reading SO_ERROR clears it;
        a link that came back keeps working, one that is gone raises PortGone."""
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not err:
            return
        try:
            same = self._ifindex() == self.ifindex
        except OSError:
            same = False
        if not same:
            raise PortGone(errno.ENODEV, "%s is gone (%s)" % (self.name, errno.errorcode.get(err, err)))

    def recv_batch(self, limit=64):
        if self.ring is None:
            return self._recv_plain(limit)
        ring, out = self.ring, []
        slot, frames = self.slot, self.frames
        unpack = _HDR.unpack_from
        while len(out) < limit:
            base = slot * FRAME_SIZE
            status, length, snaplen, mac, _, _, _, _, _ = unpack(ring, base)
            if not status & TP_STATUS_USER:
                break
            if ring[base + _SLL_PKTTYPE] < PACKET_OTHERHOST:
                out.append(ring[base + mac:base + mac + snaplen])
            ring[base:base + 4] = b"\0\0\0\0"  # TP_STATUS_KERNEL: the slot is the kernel's again
            slot = slot + 1 if slot + 1 < frames else 0
        if slot == self.slot:
            self.counters["rx_empty_wakeups"] += 1
            self._woken_empty()
            self._empty_run += 1
            if self._empty_run >= RESYNC_AFTER:
                slot = self._resync(slot)
        else:
            self._empty_run = 0
        self.slot = slot
        self.counters["rx"] += len(out)
        return out

    def _resync(self, slot):
        """Woken again and again with our slot the kernel's while frames wait elsewhere: we
        are ahead of the kernel's ring head (seen once under a flood, not understood). The
        waiting frames then start at the first one after our slot, the oldest; go there."""
        ring, frames = self.ring, self.frames
        self._empty_run = 0
        for i in range(1, frames):
            at = (slot + i) % frames
            if _STATUS.unpack_from(ring, at * FRAME_SIZE)[0] & TP_STATUS_USER:
                self.counters["rx_ring_resyncs"] += 1
                return at
        return slot

    def ring_waiting(self):
        """(frames waiting in the ring, of them not at the slot read next): a gauge,
        and a check that the kernel and we walk the ring in step."""
        if self.ring is None:
            return 0, 0
        ring, n, waiting, first = self.ring, self.frames, 0, None
        for i in range(n):
            if _STATUS.unpack_from(ring, ((self.slot + i) % n) * FRAME_SIZE)[0] & TP_STATUS_USER:
                waiting += 1
                if first is None:
                    first = i
        return waiting, first or 0

    def backlogged(self):
        """More than half the receive ring waits to be read (False without a ring)."""
        if self.ring is None:
            return False
        base = ((self.slot + self.frames // 2) % self.frames) * FRAME_SIZE
        return bool(_STATUS.unpack_from(self.ring, base)[0] & TP_STATUS_USER)

    def _recv_plain(self, limit):
        out = []
        recvfrom = self.sock.recvfrom
        while len(out) < limit:
            try:
                data, addr = recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._woken_empty()
                break
            if addr[2] < PACKET_OTHERHOST:
                out.append(data)
        self.counters["rx"] += len(out)
        return out

    def send(self, frame):
        try:
            self.sock.send(frame)
        except OSError:
            self.counters["tx_errors"] += 1
            return False
        self.counters["tx"] += 1
        return True

    def membership(self, mac, join=True):
        """Receive (or stop receiving) frames to multicast `mac` through the NIC's filter
        (PACKET_ADD_MEMBERSHIP: held by this socket, gone with it)."""
        mreq = struct.pack("=iHH8s", self.ifindex, PACKET_MR_MULTICAST, len(mac), bytes(mac))
        self.sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP if join else PACKET_DROP_MEMBERSHIP, mreq)

    def ring_drops(self):
        """Frames the kernel dropped because the ring was full (PACKET_STATISTICS, reset on read)."""
        try:
            _, drops = struct.unpack("=II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        except OSError:
            return self.counters["rx_ring_drops"]
        self.counters["rx_ring_drops"] += drops
        return self.counters["rx_ring_drops"]

    def close(self):
        if self.ring is not None:
            try:
                self.ring.close()
            except BufferError:
                pass
            self.ring = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
