"""A TUN device: bare IP packets in and out of the host's own stack.

Opening /dev/net/tun with IFF_TUN | IFF_NO_PI creates (or attaches to) the
device; what the host routes into it we read, what we write the host
receives as if it had come in on that device. The device lives as long as
the descriptor unless it was made persistent by someone else.
"""

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


class TunPort:
    kind = "ip"

    def __init__(self, ifname):
        if len(ifname.encode()) > 15:
            raise ValueError("interface name too long: %r" % ifname)
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            ifr = struct.pack("16sH22x", ifname.encode(), IFF_TUN | IFF_NO_PI)
            answer = fcntl.ioctl(self.fd, TUNSETIFF, ifr)
        except OSError:
            os.close(self.fd)
            raise
        self.name = answer[:16].rstrip(b"\0").decode()
        self.counters = {"rx": 0, "tx": 0, "tx_errors": 0, "rx_ring_drops": 0}

    def fileno(self):
        return self.fd

    def recv_batch(self, limit=64):
        out = []
        read, fd = os.read, self.fd
        while len(out) < limit:
            try:
                out.append(read(fd, 65535))
            except (BlockingIOError, InterruptedError):
                break
        self.counters["rx"] += len(out)
        return out

    def send(self, packet):
        try:
            os.write(self.fd, packet)
        except OSError:
            self.counters["tx_errors"] += 1
            return False
        self.counters["tx"] += 1
        return True

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
