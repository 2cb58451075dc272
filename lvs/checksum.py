"""Internet checksums: the full sum (RFC 1071) and incremental updates (RFC 1624).

The kernel rewrites addresses and ports with incremental updates
(ip_vs_check_diff4/2, csum_replace); so do we. An update is a "delta": the
ones'-complement sum of ~old + new over the changed 16-bit words, which can be
computed once per connection and applied to every packet:
    HC' = ~(~HC + delta)                     (RFC 1624, equation 3)
"""


def fold(s):
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksum(data):
    """RFC 1071: the 16-bit ones'-complement of the ones'-complement sum."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    return ~fold(s) & 0xFFFF


def delta(old, new):
    """The update that turns a checksum over `old` into one over `new` (equal, even lengths)."""
    s = 0
    for i in range(0, len(old), 2):
        s += (~((old[i] << 8) | old[i + 1]) & 0xFFFF) + ((new[i] << 8) | new[i + 1])
    return fold(s)


def apply(check, d):
    """Apply a delta to a checksum field value."""
    return ~fold((~check & 0xFFFF) + d) & 0xFFFF


def pseudo_sum(saddr, daddr, proto, length):
    """Sum of the IPv4 or IPv6 pseudo-header (the addresses' length says which),
    for a TCP/UDP/ICMPv6 checksum from scratch."""
    if len(saddr) == 4:
        return fold(int.from_bytes(saddr[:2], "big") + int.from_bytes(saddr[2:], "big")
                    + int.from_bytes(daddr[:2], "big") + int.from_bytes(daddr[2:], "big")
                    + proto + length)
    a = saddr + daddr
    return fold(sum(int.from_bytes(a[i:i + 2], "big") for i in range(0, 32, 2))
                + proto + (length >> 16) + (length & 0xFFFF))


def l4_checksum(saddr, daddr, proto, segment):
    """TCP/UDP checksum of `segment` (its checksum field zeroed) with the pseudo-header."""
    s = pseudo_sum(saddr, daddr, proto, len(segment))
    if len(segment) & 1:
        segment = bytes(segment) + b"\0"
    s += sum(int.from_bytes(segment[i:i + 2], "big") for i in range(0, len(segment), 2))
    return ~fold(s) & 0xFFFF
