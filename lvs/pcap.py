"""Capture files in and out: classic pcap and pcapng, standard library only.

read_capture() turns a capture into (ts, kind, data) records for the engine,
which wants bare IPv4 and IPv6 packets; PcapWriter writes what the engine
sends back as an Ethernet pcap that tcpdump, Wireshark and scapy all open.
"""

import os
import re
import struct


class CaptureError(ValueError):
    """The file is not a capture we can read, or it stops mid-record."""


LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
# Raw IP: 101 is the portable number; 12 and 14 are the DLT_RAW values some
# BSDs wrote into files; 228 is IPv4-only raw and 229 IPv6-only raw.
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
RAW_LINKTYPES = (101, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6)
SUPPORTED_LINKTYPES = (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL,
                       LINKTYPE_LINUX_SLL2) + RAW_LINKTYPES

ETHERTYPE_KINDS = {0x0800: "ipv4", 0x0806: "arp", 0x86DD: "ipv6"}
VLAN_ETHERTYPES = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad and old QinQ

PCAP_MAGIC_USEC = 0xA1B2C3D4
PCAP_MAGIC_NSEC = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
MAX_RECORD = 1 << 28  # anything bigger is a corrupt length, not a packet


# -- link layer --------------------------------------------------------------

def _after_ethertype(ethertype, frame, offset):
    """Label the payload that starts at offset, skipping VLAN tags first."""
    while ethertype in VLAN_ETHERTYPES:
        if len(frame) < offset + 4:
            return "other", frame
        ethertype = struct.unpack_from("!H", frame, offset + 2)[0]
        offset += 4
    kind = ETHERTYPE_KINDS.get(ethertype, "other")
    if kind == "ipv4":
        return "ipv4", _trim_ipv4(frame[offset:])
    if kind == "ipv6":
        return "ipv6", _trim_ipv6(frame[offset:])
    return kind, frame  # not for the engine: hand back the whole frame


def _trim_ipv4(packet):
    # Ethernet pads short frames to 60 bytes; like ip_rcv(), cut the packet
    # at its total length. A shorter capture (snaplen) is left for the engine.
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        total = struct.unpack_from("!H", packet, 2)[0]
        if 20 <= total < len(packet):
            return packet[:total]
    return packet


def _trim_ipv6(packet):
    # The same for IPv6, as ipv6_rcv() does: cut at 40 + the payload length.
    # A payload length of 0 (a jumbogram, or nothing) is left for the engine.
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        plen = struct.unpack_from("!H", packet, 4)[0]
        if plen and 40 + plen < len(packet):
            return packet[:40 + plen]
    return packet


def _decode(linktype, frame):
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return "other", frame
        return _after_ethertype(struct.unpack_from("!H", frame, 12)[0], frame, 14)
    if linktype == LINKTYPE_LINUX_SLL:  # 16-byte header, protocol last
        if len(frame) < 16:
            return "other", frame
        return _after_ethertype(struct.unpack_from("!H", frame, 14)[0], frame, 16)
    if linktype == LINKTYPE_LINUX_SLL2:  # 20-byte header, protocol first
        if len(frame) < 20:
            return "other", frame
        return _after_ethertype(struct.unpack_from("!H", frame, 0)[0], frame, 20)
    # Raw IP: no link header; 228 and 229 name the family, otherwise the
    # version nibble says what it is.
    if linktype == LINKTYPE_IPV4:
        return "ipv4", _trim_ipv4(frame)
    if linktype == LINKTYPE_IPV6:
        return "ipv6", _trim_ipv6(frame)
    if frame and frame[0] >> 4 == 4:
        return "ipv4", _trim_ipv4(frame)
    if frame and frame[0] >> 4 == 6:
        return "ipv6", _trim_ipv6(frame)
    return "other", frame


# -- file reading --------------------------------------------------------------

class _Reader:
    """Exact-size reads that know where they are, for error messages."""

    def __init__(self, f, name):
        self.f = f
        self.name = name
        self.offset = 0

    def read(self, n, what):
        data = self.f.read(n)
        while len(data) < n:
            more = self.f.read(n - len(data))
            if not more:
                raise CaptureError("%s: file ends inside %s at offset %d (%d of %d bytes)"
                                   % (self.name, what, self.offset, len(data), n))
            data += more
        self.offset += n
        return data

    def at_end(self):
        # Peek one byte: a clean end is only allowed between records.
        byte = self.f.read(1)
        if not byte:
            return True, b""
        return False, byte

    def fail(self, message, offset=None):
        raise CaptureError("%s: offset %d: %s" % (
            self.name, self.offset if offset is None else offset, message))


def read_capture(path_or_fileobj):
    """Yield (ts, kind, data) for every packet, in file order.

    ts is float seconds; kind is "ipv4" or "ipv6" (data: the IP packet, link
    header and VLAN tags removed, link padding cut at the IPv4 total length or
    40 + the IPv6 payload length) or "arp"/"other" (data: the raw frame).
    The kind comes from the link layer (ethertype, SLL protocol, raw link
    type 228/229), else from the version nibble (raw link types 101/12/14).
    Raises CaptureError for non-captures, unsupported link types and files
    cut off inside a record, after yielding the records before the problem.
    """
    if hasattr(path_or_fileobj, "read"):
        name = getattr(path_or_fileobj, "name", "<capture>")
        yield from _read(_Reader(path_or_fileobj, str(name)))
        return
    with open(path_or_fileobj, "rb") as f:
        yield from _read(_Reader(f, os.fspath(path_or_fileobj)))


def _read(r):
    head = r.f.read(4)
    r.offset = len(head)
    if len(head) < 4:
        r.fail("not a capture file (too short)", 0)
    for order in "<>":
        magic = struct.unpack(order + "I", head)[0]
        if magic == PCAP_MAGIC_USEC:
            return _read_pcap(r, order, 1000000)
        if magic == PCAP_MAGIC_NSEC:
            return _read_pcap(r, order, 1000000000)
    if struct.unpack("<I", head)[0] == PCAPNG_SHB:  # same in both orders
        return _read_pcapng(r)
    r.fail("not a pcap or pcapng file (magic %s)" % head.hex(), 0)


def _read_pcap(r, order, units):
    _major, _minor, _zone, _sigfigs, _snaplen, network = struct.unpack(
        order + "HHiIII", r.read(20, "the pcap file header"))
    linktype = network & 0x0FFFFFFF  # upper bits may carry FCS information
    if linktype not in SUPPORTED_LINKTYPES:
        r.fail("unsupported link type %d" % linktype, 20)
    while True:
        end, first = r.at_end()
        if end:
            return
        start = r.offset
        r.offset += 1
        header = first + r.read(15, "a record header")
        sec, frac, caplen, _wirelen = struct.unpack(order + "IIII", header)
        if caplen > MAX_RECORD:
            r.fail("record length %d is not plausible" % caplen, start)
        frame = r.read(caplen, "a packet record")
        # Integer division rounds once, so ts is the closest float to the file's value.
        kind, data = _decode(linktype, frame)
        yield (sec * units + frac) / units, kind, data


def _options(body, order):
    """Yield (code, value) pairs from a pcapng option list."""
    pos = 0
    while pos + 4 <= len(body):
        code, length = struct.unpack_from(order + "HH", body, pos)
        if code == 0:  # opt_endofopt
            return
        yield code, body[pos + 4:pos + 4 + length]
        pos += 4 + length + (-length % 4)


def _read_pcapng(r):
    order = "<"
    interfaces = []  # per section: [linktype, ticks per second, offset s, snaplen]
    last_ts = 0.0
    r.offset = 0
    head = b"\x0a\x0d\x0d\x0a"  # already consumed: the first block's type
    while True:
        start = r.offset
        if head is None:
            end, first = r.at_end()
            if end:
                return
            r.offset += 1
            head = first + r.read(3, "a block header")
        else:
            r.offset += 4
        if head == b"\x0a\x0d\x0d\x0a":
            # A new section: its byte-order magic decides how to read it all.
            raw_len, bom = r.read(4, "a section header"), r.read(4, "a section header")
            if struct.unpack("<I", bom)[0] == PCAPNG_BYTE_ORDER_MAGIC:
                order = "<"
            elif struct.unpack(">I", bom)[0] == PCAPNG_BYTE_ORDER_MAGIC:
                order = ">"
            else:
                r.fail("bad pcapng byte-order magic %s" % bom.hex(), start + 8)
            total = struct.unpack(order + "I", raw_len)[0]
            if total < 28 or total % 4 or total > MAX_RECORD:
                r.fail("bad section header length %d" % total, start)
            r.read(total - 12, "a section header")  # version, length, options: unused
            interfaces = []
            head = None
            continue
        block_type = struct.unpack(order + "I", head)[0]
        total = struct.unpack(order + "I", r.read(4, "a block header"))[0]
        if total < 12 or total % 4 or total > MAX_RECORD:
            r.fail("bad block length %d" % total, start)
        body = r.read(total - 8, "a block")[:-4]  # drop the trailing length copy
        head = None
        if block_type == 1:  # Interface Description Block
            if len(body) < 8:
                r.fail("interface description block too short", start)
            linktype, _reserved, snaplen = struct.unpack_from(order + "HHI", body)
            units, offset_s = 1000000, 0  # default if_tsresol is 6: microseconds
            for code, value in _options(body[8:], order):
                if code == 9 and value:  # if_tsresol
                    n = value[0]
                    units = 2 ** (n & 0x7F) if n & 0x80 else 10 ** n
                elif code == 14 and len(value) == 8:  # if_tsoffset, seconds
                    offset_s = struct.unpack(order + "q", value)[0]
            interfaces.append((linktype, units, offset_s, snaplen))
            continue
        if block_type == 6:  # Enhanced Packet Block
            if len(body) < 20:
                r.fail("enhanced packet block too short", start)
            ifid, ts_high, ts_low, caplen, _wirelen = struct.unpack_from(order + "IIIII", body)
            frame = body[20:20 + caplen]
            ticks = (ts_high << 32) | ts_low
        elif block_type == 2:  # obsolete Packet Block, same idea
            if len(body) < 20:
                r.fail("packet block too short", start)
            ifid, _drops, ts_high, ts_low, caplen, _wirelen = struct.unpack_from(
                order + "HHIIII", body)
            frame = body[20:20 + caplen]
            ticks = (ts_high << 32) | ts_low
        elif block_type == 3:  # Simple Packet Block: interface 0, no timestamp
            if len(body) < 4:
                r.fail("simple packet block too short", start)
            wirelen = struct.unpack_from(order + "I", body)[0]
            ifid, ticks = 0, None
            caplen = min(wirelen, len(body) - 4)
            if interfaces and interfaces[0][3]:
                caplen = min(caplen, interfaces[0][3])
            frame = body[4:4 + caplen]
        else:
            continue  # name resolution, statistics, custom blocks: not packets
        if ifid >= len(interfaces):
            r.fail("packet for undeclared interface %d" % ifid, start)
        linktype, units, offset_s, _snaplen = interfaces[ifid]
        if linktype not in SUPPORTED_LINKTYPES:
            r.fail("unsupported link type %d on interface %d" % (linktype, ifid), start)
        if len(frame) < caplen:
            r.fail("captured length %d overruns its block" % caplen, start)
        if ticks is not None:
            last_ts = (ticks + offset_s * units) / units
        kind, data = _decode(linktype, frame)
        yield last_ts, kind, data


# -- writing -------------------------------------------------------------------

class PcapWriter:
    """Classic little-endian microsecond pcap, Ethernet link type."""

    SNAPLEN = 262144

    def __init__(self, path_or_fileobj):
        if hasattr(path_or_fileobj, "write"):
            self.f, self._owned = path_or_fileobj, False
        else:
            self.f, self._owned = open(path_or_fileobj, "wb"), True
        self.f.write(struct.pack("<IHHiIII", PCAP_MAGIC_USEC, 2, 4, 0, 0,
                                 self.SNAPLEN, LINKTYPE_ETHERNET))

    def write(self, ts, frame):
        micros = int(round(ts * 1000000))  # round, so 0.1 s stays 100000 us
        sec, usec = divmod(micros, 1000000)
        frame = bytes(frame)
        kept = frame[:self.SNAPLEN]
        self.f.write(struct.pack("<IIII", sec, usec, len(kept), len(frame)))
        self.f.write(kept)

    def close(self):
        if self.f is None:
            return
        if self._owned:
            self.f.close()
        else:
            self.f.flush()  # the caller's file: leave it open
        self.f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def ether_frame(dst_mac, src_mac, ip_packet):
    """An Ethernet II frame carrying an IP packet: ethertype 0x86DD if the
    packet's version nibble is 6, else 0x0800 (IPv4)."""
    if len(dst_mac) != 6 or len(src_mac) != 6:
        raise ValueError("MAC addresses must be 6 bytes")
    ethertype = b"\x86\xdd" if ip_packet and ip_packet[0] >> 4 == 6 else b"\x08\x00"
    return bytes(dst_mac) + bytes(src_mac) + ethertype + bytes(ip_packet)


_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}$")


def parse_mac(text):
    """"02:00:00:00:00:01" (or with dashes) -> 6 bytes."""
    if not isinstance(text, str) or not _MAC_RE.match(text):
        raise ValueError("bad MAC address %r (want six hex pairs like 02:00:00:00:00:01)"
                         % (text,))
    return bytes(int(part, 16) for part in re.split("[:-]", text))


def default_mac(addr):
    """A locally administered unicast MAC made from a next hop's address.

    IPv4 (4 bytes): 02:00 + its 4 bytes, so 198.51.100.10 -> 02:00:c6:33:64:0a.
    IPv6 (16 bytes): 02:06 + its last 4 bytes, so 2001:db8:1::10 ->
    02:06:00:00:00:10 and 2001:db8::c633:640a -> 02:06:c6:33:64:0a. The
    second byte keeps the two families apart (and 2001:db8::1 away from the
    director's default 02:00:00:00:00:01); addresses that differ only above
    their last 32 bits share a MAC, so give such next hops --neigh entries.
    """
    addr = bytes(addr)
    if len(addr) == 4:
        return b"\x02\x00" + addr
    if len(addr) == 16:
        return b"\x02\x06" + addr[12:]
    raise ValueError("an IPv4 address is 4 bytes and an IPv6 address 16")
