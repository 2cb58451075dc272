"""The ceiling for a Python data plane: a NAT forwarder that does nothing else.

On the same kind of port as pylvs (lvs.ports.RawPort: AF_PACKET, the mapped
ring), in batches: a frame to VIP:port gets the real server's address and
MAC, a reply from the real server gets the VIP back and the client's MAC
(learnt from its frames). Fixed addresses, TTL and incremental checksums; no
connection table, no state machine, no statistics, no ARP (the benchmark
gives the client a static neighbour entry for the VIP).

Run in the director's namespace: python -m bench.minfwd IFACE VIP RS RS_MAC PORT...
It stops by itself after --seconds (default 600).
"""

import socket
import struct
import sys
import time

from lvs.checksum import apply, delta, fold
from lvs.fastpath import TTL_DELTA
from lvs.loop import Loop
from lvs.ports import RawPort


def main(argv):
    seconds = 600.0
    if "--seconds" in argv:
        i = argv.index("--seconds")
        seconds = float(argv[i + 1])
        del argv[i:i + 2]
    iface, vip, rs, rs_mac = argv[:4]
    ports = {int(p) for p in argv[4:]}
    vip, rs = socket.inet_aton(vip), socket.inet_aton(rs)
    rs_mac = bytes.fromhex(rs_mac.replace(":", ""))
    port = RawPort(iface)
    mine = port.mac
    ip_in, ip_out = fold(delta(vip, rs) + TTL_DELTA), fold(delta(rs, vip) + TTL_DELTA)
    l4_in, l4_out = delta(vip, rs), delta(rs, vip)
    clients = {}          # client address -> its MAC
    send = port.sock.send
    pack = struct.pack_into

    def forward():
        for f in port.recv_batch(64):
            if len(f) < 42 or f[12:14] != b"\x08\x00" or f[14] != 0x45 or f[22] <= 1:
                continue
            proto = f[23]
            if proto == 6:
                csum = 50
            elif proto == 17:
                csum = 40
            else:
                continue
            if f[30:34] == vip and (f[36] << 8 | f[37]) in ports:
                clients[f[26:30]] = f[6:12]
                buf = bytearray(f)
                buf[0:6] = rs_mac
                buf[30:34] = rs
                ip_d, l4_d = ip_in, l4_in
            elif f[26:30] == rs and (f[34] << 8 | f[35]) in ports:
                mac = clients.get(f[30:34])
                if mac is None:
                    continue
                buf = bytearray(f)
                buf[0:6] = mac
                buf[26:30] = vip
                ip_d, l4_d = ip_out, l4_out
            else:
                continue
            buf[6:12] = mine
            buf[22] -= 1
            pack("!H", buf, 24, apply((f[24] << 8) | f[25], ip_d))
            check = (f[csum] << 8) | f[csum + 1]
            if check or proto == 6:
                pack("!H", buf, csum, apply(check, l4_d) or (0xFFFF if proto == 17 else 0))
            try:
                send(buf)
            except OSError:
                pass

    loop = Loop(time.monotonic)
    loop.add_reader(port, forward)
    end = time.monotonic() + seconds
    loop.add_timer(lambda: end, lambda now: loop.stop())
    print("ready", flush=True)
    loop.run()


if __name__ == "__main__":
    main(sys.argv[1:])
