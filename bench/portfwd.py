"""One minimal forwarder over each of pylvs's port choices: what bench/ports.py measures.

bench/minfwd.py's kind of work, one way only: a packet to VIP:port gets the
real server's address (on an Ethernet port also its MAC, and ours as the
source), the TTL decremented, the IP checksum and the UDP/TCP checksum
updated incrementally, and is sent. No connection table, no state, no
statistics. The port is one of

  tun       lvs.ports.TunPort: bare IP packets. The director's kernel routes
            the VIP into the device (bench/ports.py adds the route) and reads
            back what we write to it as if it had arrived on the device, then
            routes it on to the real server (its own TTL decrements too).
  recvfrom  lvs.ports.RawPort(ring=False): AF_PACKET, one recvfrom() a frame
  ring      lvs.ports.RawPort(ring=True): AF_PACKET, the PACKET_MMAP ring
            (pylvs's default)

and all three run the same forward() (make_forward): the header offsets are
locals of it whatever the port, so only the port's own reading and writing,
and the two MACs an Ethernet port must write, differ. Sending is one call of
a builtin per packet in every case: the socket's send() for AF_PACKET, the
unbuffered FileIO's write() on the TUN descriptor.

Run in the director's namespace:
  python -m bench.portfwd KIND IFACE VIP RS RS_MAC PORT... [--seconds S]
(for tun, IFACE is the TUN device to create and RS_MAC is ignored: "-").
It says "ready" once the port is open and stops by itself after --seconds
(default 600).
"""

import os
import socket
import struct
import sys
import time

from lvs.checksum import apply, delta, fold
from lvs.fastpath import TTL_DELTA
from lvs.loop import Loop
from lvs.ports import RawPort, TunPort

KINDS = ("tun", "recvfrom", "ring")
ETH_HLEN = 14


def make_forward(recv_batch, send, link, vip, rs, ports, rs_mac=b"", mine=b"", batch=64):
    """forward(): one batch from recv_batch(batch), each packet for VIP:port rewritten to `rs`
    and handed to send(). `link`: the bytes before the IP header (14 on Ethernet, 0 on TUN)."""
    ip_d, l4_d = fold(delta(vip, rs) + TTL_DELTA), delta(vip, rs)
    macs = bytes(rs_mac) + bytes(mine)
    if link and len(macs) != 12:
        raise ValueError("an Ethernet port needs both MACs")
    pack = struct.pack_into
    offsets = (link, link + 28, link + 8, link + 9, link + 10, link + 11, link + 16, link + 20,
               link + 22, link + 23, link + 26, link + 36)

    def forward():
        o, least, ttl, pro, ipc, ipc1, dst, dst_end, dp, dp1, udpc, tcpc = offsets
        for f in recv_batch(batch):
            if len(f) < least or (o and f[12:14] != b"\x08\x00") or f[o] != 0x45 or f[ttl] <= 1:
                continue
            proto = f[pro]
            if proto == 17:
                csum = udpc
            elif proto == 6:
                csum = tcpc
            else:
                continue
            if f[dst:dst_end] != vip or (f[dp] << 8 | f[dp1]) not in ports:
                continue
            buf = bytearray(f)
            if o:
                buf[0:12] = macs
            buf[dst:dst_end] = rs
            buf[ttl] -= 1
            pack("!H", buf, ipc, apply((f[ipc] << 8) | f[ipc1], ip_d))
            check = (f[csum] << 8) | f[csum + 1]
            if check or proto == 6:
                pack("!H", buf, csum, apply(check, l4_d) or (0xFFFF if proto == 17 else 0))
            try:
                send(buf)
            except OSError:
                pass

    return forward


def open_port(kind, iface):
    """(port, send, link, our MAC) for one port choice."""
    if kind == "tun":
        port = TunPort(iface)
        writer = os.fdopen(port.fd, "wb", buffering=0, closefd=False)
        return port, writer.write, 0, b""
    if kind not in KINDS:
        raise ValueError("port kind: one of %s" % ", ".join(KINDS))
    port = RawPort(iface, ring=kind == "ring")
    if (port.ring is not None) != (kind == "ring"):
        raise OSError("no PACKET_MMAP ring here")
    return port, port.sock.send, ETH_HLEN, port.mac


def main(argv):
    seconds = 600.0
    if "--seconds" in argv:
        i = argv.index("--seconds")
        seconds = float(argv[i + 1])
        del argv[i:i + 2]
    kind, iface, vip, rs, rs_mac = argv[:5]
    ports = frozenset(int(p) for p in argv[5:])
    port, send, link, mine = open_port(kind, iface)
    rs_mac = bytes.fromhex(rs_mac.replace(":", "")) if link else b""
    forward = make_forward(port.recv_batch, send, link, socket.inet_aton(vip), socket.inet_aton(rs),
                           ports, rs_mac, mine)
    loop = Loop(time.monotonic)
    loop.add_reader(port, forward)
    end = time.monotonic() + seconds
    loop.add_timer(lambda: end, lambda now: loop.stop())
    print("ready", port.name, getattr(port, "ring_mode", "tun"), flush=True)
    try:
        loop.run()
    finally:
        port.close()


if __name__ == "__main__":
    main(sys.argv[1:])
