"""The sync daemons' multicast UDP sockets, set up as ip_vs_sync.c sets up its own.

Master (make_send_sock): out of the multicast interface (IP_MULTICAST_IF by
index), our own messages not looped back, the configured TTL, fragmentation
allowed (IP_PMTUDISC_DONT), bound to the interface's first IPv4 address and
connected to group:port. Backup (make_receive_sock): address reuse, bound to
the interface (SO_BINDTODEVICE) and to group:port, member of the group on
that interface. The host's own IP stack carries them: these are real
datagrams, which a kernel director's sync daemon can read and write too.
An IPv6 group (--mcast-group ff02::...) gets the same options in IPv6's words
(IPV6_MULTICAST_IF/LOOP/HOPS, IPV6_JOIN_GROUP); the master's socket is not
bound to an address first, as the kernel binds only IPv4 ones.
"""

import socket
import struct

from ..hostconf import ipv4_addresses

IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT = 0
IPV6_MTU_DISCOVER = 23
SO_BINDTODEVICE = 25


class SyncSocketError(Exception):
    """Why a sync socket could not be set up (the errno's text)."""


def _ifindex(name):
    # sysfs, not socket.if_nametoindex: PyPy 3.9's socket module has none.
    try:
        with open("/sys/class/net/%s/ifindex" % name) as f:
            return int(f.read())
    except (OSError, ValueError):
        raise SyncSocketError("No such device") from None


def send_socket(cfg, tid=0):
    """A master's socket for the settings `cfg` (lvs/adm.py start_daemon), sync
    thread `tid` (its port is the configured one + tid: get_mcast_sockaddr)."""
    index = _ifindex(cfg["mcast_ifn"])
    if ":" in cfg["mcast_group"]:
        return _send_socket6(cfg, tid, index)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                     struct.pack("=4s4si", b"\0" * 4, b"\0" * 4, index))      # struct ip_mreqn
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, cfg["mcast_ttl"])
        s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        addrs = ipv4_addresses(cfg["mcast_ifn"])
        # bind_mcastif_addr: the interface's address (the kernel warns and binds 0.0.0.0 without one)
        s.bind((socket.inet_ntoa(addrs[0][0]) if addrs else "0.0.0.0", 0))
        s.connect((cfg["mcast_group"], cfg["mcast_port"] + tid))
        s.setblocking(False)
    except OSError as e:
        s.close()
        raise SyncSocketError(e.strerror or str(e)) from None
    return s


def receive_socket(cfg, tid=0):
    """A backup's socket for `cfg`, sync thread `tid`."""
    index = _ifindex(cfg["mcast_ifn"])
    if ":" in cfg["mcast_group"]:
        return _receive_socket6(cfg, tid, index)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, cfg["mcast_ifn"].encode())
        s.bind((cfg["mcast_group"], cfg["mcast_port"] + tid))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     struct.pack("=4s4si", socket.inet_aton(cfg["mcast_group"]), b"\0" * 4, index))
        s.setblocking(False)
    except OSError as e:
        s.close()
        raise SyncSocketError(e.strerror or str(e)) from None
    return s


def _send_socket6(cfg, tid, index):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, cfg["mcast_ttl"])
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IP_PMTUDISC_DONT)
        s.connect((cfg["mcast_group"], cfg["mcast_port"] + tid, 0, index))
        s.setblocking(False)
    except OSError as e:
        s.close()
        raise SyncSocketError(e.strerror or str(e)) from None
    return s


def _receive_socket6(cfg, tid, index):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, cfg["mcast_ifn"].encode())
        s.bind((cfg["mcast_group"], cfg["mcast_port"] + tid, 0, index))
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                     struct.pack("=16si", socket.inet_pton(socket.AF_INET6, cfg["mcast_group"]), index))
        s.setblocking(False)
    except OSError as e:
        s.close()
        raise SyncSocketError(e.strerror or str(e)) from None
    return s
