"""The kernel's connection-sync messages (ip_vs_sync.c), byte for byte.

A master multicasts datagrams of connection entries; a backup reads them.
Two formats, both decoded, either encoded (the sync_version sysctl):

  version 1   header  reserved 0, syncid, size, nr_conns, version 1, spare 0   (8 bytes)
              entry   type (bit 0: IPv6), protocol, ver_size (version in the top
                      4 bits, the entry's length in the low 12), flags (32 bits),
                      state, cport, vport, dport, fwmark, timeout (seconds),
                      caddr, vaddr, daddr (4 or 16 bytes each)   (36 or 72 bytes)
                      then options (type, length, data): 1 sequence data, 2 the
                      persistence engine's data, 3 its name; type | 0x40 marks an
                      option a receiver may skip. Entries start on 4-byte
                      boundaries (zero padding, not counted in ver_size).
  version 0   header  nr_conns, syncid, size                                  (4 bytes)
              entry   reserved, protocol, cport, vport, dport, caddr, vaddr,
                      daddr, flags (16 bits), state   (24 bytes), and when flags
                      has IN_SEQ/OUT_SEQ 24 bytes of sequence data, which the
                      kernel copies from memory as it is: host order, little-
                      endian on the machines IPVS runs on.

Everything is big-endian on the wire except v0's sequence data. Counts are
one byte: a message holding more than 255 entries says how many modulo 256,
as the kernel's does (a sync_maxlen above ~9 kB makes that possible).

decode() reads a datagram as ip_vs_process_message does: the checks, their
order, what drops the rest of a message and what skips one entry; each
refusal is named (REASONS) so that a backup can count it. IPv6 entries are
read as a kernel built with IPv6 IPVS reads them (Debian's is).
"""

import struct
from collections import namedtuple

from .flags import IP_VS_CONN_F_HASHED, IPPROTO_TCP, IPPROTO_UDP

SYNC_GROUP = "224.0.0.81"
SYNC_PORT = 8848
SYNC_PROTO_VER = 1
SYNC_HLEN = 20 + 8            # IPv4 + UDP: sync_maxlen is the MTU less this

MESG_HLEN = 8
MESG_V0_HLEN = 4
V4_LEN, V6_LEN = 36, 72
V0_LEN, V0_FULL_LEN = 24, 48
STYPE_F_INET6 = 1
SVER_SHIFT, SVER_MASK = 12, 0x0FFF

IPVS_OPT_SEQ_DATA = 1
IPVS_OPT_PE_DATA = 2
IPVS_OPT_PE_NAME = 3
IPVS_OPT_PARAM = 7
IPVS_OPT_F_PARAM = 1 << (IPVS_OPT_PARAM - 1)
IP_VS_PEDATA_MAXLEN = 255
IP_VS_PENAME_MAXLEN = 16
SEQ_OPTIONS_LEN = 24          # struct ip_vs_sync_conn_options: two struct ip_vs_seq

IP_VS_CONN_F_SEQ_MASK = 0x0600
IP_VS_CONN_F_BACKUP_MASK = 0x0007 | 0x0080 | 0x0100 | 0x0600 | 0x0800 | 0x1000
IP_VS_CONN_F_BACKUP_UPD_MASK = 0x0100 | 0x0600

_MESG = struct.Struct("!BBHBbH")
_MESG_V0 = struct.Struct("!BBH")
_HEAD = struct.Struct("!BBHIHHHHII")          # the v1 entry up to the addresses
_V0 = struct.Struct("!BBHHH4s4s4sHH")
_SEQ = struct.Struct("!III")
_SEQ_V0 = struct.Struct("<III")

# The states a backup accepts per protocol (pp->num_states): TCP's eleven, UDP's one.
NUM_STATES = {IPPROTO_TCP: 11, IPPROTO_UDP: 1}


class SyncEntry(namedtuple("SyncEntry", (
        "protocol", "flags", "state", "caddr", "cport", "vaddr", "vport", "daddr", "dport",
        "fwmark", "timeout", "in_seq", "out_seq", "pe_data", "pe_name", "ipv6"))):
    """One connection or template as a sync message carries it. Addresses are
    bytes (4, or 16 when ipv6); timeout in whole seconds (v0 carries none: 0);
    in_seq/out_seq are (init_seq, delta, previous_delta) or None."""
    __slots__ = ()


SyncEntry.__new__.__defaults__ = (0, 0, None, None, None, None, False)


# What a backup refuses, by name (the kernel's debug messages, shortened).
# Those marked "message" drop the rest of the datagram; the others skip one entry.
REASONS = {
    "sync_short": "message",              # shorter than a v0 header
    "sync_bad_size": "message",           # the header's size is not the datagram's
    "sync_foreign_syncid": "message",     # another syncid than the backup's
    "sync_truncated_entry": "message",    # an entry runs past the datagram
    "sync_bad_entry_version": "message",  # an entry of an unknown version
    "sync_bad_entry_type": "message",     # an entry type neither IPv4 nor IPv6
    "sync_bad_option": "message",         # option header or length out of bounds
    "sync_bad_seq_option": "message",     # sequence data of the wrong length, or twice
    "sync_bad_pe_data": "message",        # persistence data too long, or twice
    "sync_bad_pe_name": "message",        # persistence engine name too long, or twice
    "sync_unknown_option": "entry",       # a mandatory option we do not know
    "sync_bad_protocol": "entry",         # a protocol without IPVS support here
    "sync_bad_state": "entry",            # a state the protocol does not have
    "sync_no_pe": "entry",                # a persistence engine not available here
}

Decoded = namedtuple("Decoded", "version entries skipped dropped")
Decoded.__doc__ = """decode()'s answer: the version read (0 or 1; None if the header
was refused), the entries to apply in order, the reasons entries were skipped,
and why the rest of the message was dropped (None if it was read to the end)."""


# ---------------------------------------------------------------- encoding

def entry_len_v1(e):
    """The length a version-1 entry declares in ver_size (without padding)."""
    n = V6_LEN if e.ipv6 else V4_LEN
    if e.flags & IP_VS_CONN_F_SEQ_MASK:
        n += SEQ_OPTIONS_LEN + 2
    if e.pe_data:
        n += len(e.pe_data) + 2
        if e.pe_name:
            n += len(e.pe_name) + 2
    return n


def encode_entry_v1(e):
    """One version-1 entry, as ip_vs_sync_conn writes it (HASHED cleared)."""
    size = entry_len_v1(e)
    out = bytearray(_HEAD.pack(STYPE_F_INET6 if e.ipv6 else 0, e.protocol, size & SVER_MASK,
                               e.flags & ~IP_VS_CONN_F_HASHED & 0xFFFFFFFF, e.state,
                               e.cport, e.vport, e.dport, e.fwmark, e.timeout))
    out += e.caddr + e.vaddr + e.daddr
    if e.flags & IP_VS_CONN_F_SEQ_MASK:
        out += bytes((IPVS_OPT_SEQ_DATA, SEQ_OPTIONS_LEN))
        out += _SEQ.pack(*(e.in_seq or (0, 0, 0))) + _SEQ.pack(*(e.out_seq or (0, 0, 0)))
    if e.pe_data:
        out += bytes((IPVS_OPT_PE_DATA, len(e.pe_data))) + e.pe_data
        if e.pe_name:
            out += bytes((IPVS_OPT_PE_NAME, len(e.pe_name))) + e.pe_name
    return bytes(out)


def entry_len_v0(e):
    return V0_FULL_LEN if e.flags & IP_VS_CONN_F_SEQ_MASK else V0_LEN


def encode_entry_v0(e):
    """One version-0 entry (IPv4 only; flags cut to 16 bits, as htons does)."""
    out = _V0.pack(0, e.protocol, e.cport, e.vport, e.dport, e.caddr, e.vaddr, e.daddr,
                   e.flags & ~IP_VS_CONN_F_HASHED & 0xFFFF, e.state & 0xFFFF)
    if e.flags & IP_VS_CONN_F_SEQ_MASK:
        out += _SEQ_V0.pack(*(e.in_seq or (0, 0, 0))) + _SEQ_V0.pack(*(e.out_seq or (0, 0, 0)))
    return out


class MessageBuffer:
    """One message being filled (struct ip_vs_sync_buff): its room is
    max(the first entry + header, sync_maxlen), as ip_vs_sync_buff_create sizes it."""

    __slots__ = ("version", "syncid", "data", "room", "nr_conns", "firstuse")

    def __init__(self, version, syncid, first_len, maxlen, now):
        self.version = version
        self.syncid = syncid
        hlen = MESG_HLEN if version else MESG_V0_HLEN
        self.room = max(first_len + hlen, maxlen)
        self.data = bytearray(hlen)
        self.nr_conns = 0
        self.firstuse = now

    def accepts(self, version, length):
        """Can an entry of `version` and `length` go in (after v1's padding)? A
        buffer of the other version is sent first (the kernel reads v0's count
        where v1 has its reserved zero byte: a v0 count that wrapped to 0 sends it too)."""
        if version != self.version or (not version and not self.nr_conns):
            return False
        pad = (-len(self.data)) & 3 if version else 0
        return len(self.data) + pad + length <= self.room

    def add(self, encoded):
        if self.version:
            self.data += bytes((-len(self.data)) & 3)
        self.data += encoded
        self.nr_conns = (self.nr_conns + 1) & 0xFF   # __u8, as in the kernel

    def message(self):
        """The datagram: the header with the count and size so far."""
        size = len(self.data)
        if self.version:
            head = _MESG.pack(0, self.syncid, size & 0xFFFF, self.nr_conns, SYNC_PROTO_VER, 0)
        else:
            head = _MESG_V0.pack(self.nr_conns, self.syncid, size & 0xFFFF)
        return head + bytes(self.data[len(head):])


def encode(entries, syncid=0, version=1, maxlen=1500 - SYNC_HLEN):
    """The datagrams a master would send for `entries` added one after the other
    with nothing flushed in between (a full buffer goes out, a new one starts)."""
    out, buf = [], None
    for e in entries:
        if version:
            data, n = encode_entry_v1(e), entry_len_v1(e)
        else:
            data, n = encode_entry_v0(e), entry_len_v0(e)
        if buf is not None and not buf.accepts(version, n):
            out.append(buf.message())
            buf = None
        if buf is None:
            buf = MessageBuffer(version, syncid, n, maxlen, 0)
        buf.add(data)
    if buf is not None:
        out.append(buf.message())
    return out


# ---------------------------------------------------------------- decoding

def decode(data, syncid=0, known_pe=()):
    """Read one datagram as a backup with `syncid` (0: any) does.

    `known_pe` names the persistence engines this side has (entries carrying
    data for another are skipped)."""
    n = len(data)
    if n < MESG_V0_HLEN:
        return Decoded(None, [], [], "sync_short")
    reserved, msg_syncid, size = _MESG_V0.unpack_from(data)
    if n != size:
        return Decoded(None, [], [], "sync_bad_size")
    if syncid != 0 and msg_syncid != syncid:
        return Decoded(None, [], [], "sync_foreign_syncid")
    # Below 8 bytes the kernel reads the v1 fields from what its buffer held
    # before; either way such a message holds no entry: read it as v0.
    if n >= MESG_HLEN:
        _, _, _, nr_conns, version, spare = _MESG.unpack_from(data)
        if version == SYNC_PROTO_VER and reserved == 0 and spare == 0:
            return _decode_v1(data, nr_conns, known_pe)
    return _decode_v0(data, reserved)


def _decode_v0(data, nr_conns):
    """ip_vs_process_message_v0."""
    entries, skipped = [], []
    n = len(data)
    p = MESG_V0_HLEN
    for _ in range(nr_conns):
        if p + V0_LEN > n:
            return Decoded(0, entries, skipped, "sync_truncated_entry")
        (_, protocol, cport, vport, dport, caddr, vaddr, daddr, flags,
         state) = _V0.unpack_from(data, p)
        flags = (flags | 0x0020) & ~IP_VS_CONN_F_HASHED          # | IP_VS_CONN_F_SYNC
        in_seq = out_seq = None
        if flags & IP_VS_CONN_F_SEQ_MASK:
            if p + V0_FULL_LEN > n:
                return Decoded(0, entries, skipped, "sync_truncated_entry")
            in_seq = _SEQ_V0.unpack_from(data, p + V0_LEN)
            out_seq = _SEQ_V0.unpack_from(data, p + V0_LEN + 12)
            p += V0_FULL_LEN
        else:
            p += V0_LEN
        if not flags & 0x1000:                                    # not a template
            if protocol not in NUM_STATES:
                skipped.append("sync_bad_protocol")
                continue
            if state >= NUM_STATES[protocol]:
                skipped.append("sync_bad_state")
                continue
        entries.append(SyncEntry(protocol, flags, state, caddr, cport, vaddr, vport, daddr,
                                 dport, 0, 0, in_seq, out_seq))
    return Decoded(0, entries, skipped, None)


def _decode_v1(data, nr_conns, known_pe):
    """ip_vs_process_message's version-1 loop and ip_vs_proc_sync_conn."""
    entries, skipped = [], []
    n = len(data)
    end = MESG_HLEN
    for _ in range(nr_conns):
        p = end
        if p + V4_LEN > n:
            return Decoded(1, entries, skipped, "sync_truncated_entry")
        (stype, protocol, ver_size, flags, state, cport, vport, dport, fwmark,
         timeout) = _HEAD.unpack_from(data, p)
        size = ver_size & SVER_MASK
        end = p + size
        if end > n:
            return Decoded(1, entries, skipped, "sync_truncated_entry")
        if ver_size >> SVER_SHIFT:
            return Decoded(1, entries, skipped, "sync_bad_entry_version")
        result = _entry(data, p, end, stype, protocol, flags, state, cport, vport, dport,
                        fwmark, timeout, known_pe)
        if result in REASONS:
            if REASONS[result] == "message":
                return Decoded(1, entries, skipped, result)
            skipped.append(result)
        else:
            entries.append(result)
        end = p + ((size + 3) & ~3)
    return Decoded(1, entries, skipped, None)


def _entry(data, p, end, stype, protocol, flags, state, cport, vport, dport, fwmark, timeout,
           known_pe):
    """One version-1 entry from p to end: a SyncEntry, or a reason from REASONS."""
    if stype & STYPE_F_INET6:
        ipv6, alen = True, 16
    elif not stype:
        ipv6, alen = False, 4
    else:
        return "sync_bad_entry_type"
    q = p + 24 + 3 * alen
    if q > end:
        return "sync_truncated_entry"
    a = p + 24
    caddr, vaddr, daddr = data[a:a + alen], data[a + alen:a + 2 * alen], data[a + 2 * alen:q]
    seq = pe_data = pe_name = None
    while q < end:
        if q + 2 > end:
            return "sync_bad_option"
        ptype, plen = data[q], data[q + 1]
        q += 2
        if not plen or q + plen > end:
            return "sync_bad_option"
        kind = ptype & ~IPVS_OPT_F_PARAM
        if kind == IPVS_OPT_SEQ_DATA:
            if plen != SEQ_OPTIONS_LEN or seq is not None:
                return "sync_bad_seq_option"
            seq = (_SEQ.unpack_from(data, q), _SEQ.unpack_from(data, q + 12))
        elif kind == IPVS_OPT_PE_DATA:
            if plen > IP_VS_PEDATA_MAXLEN or pe_data is not None:
                return "sync_bad_pe_data"
            pe_data = bytes(data[q:q + plen])
        elif kind == IPVS_OPT_PE_NAME:
            if plen > IP_VS_PENAME_MAXLEN or pe_name is not None:
                return "sync_bad_pe_name"
            pe_name = bytes(data[q:q + plen])
        elif not ptype & IPVS_OPT_F_PARAM:
            return "sync_unknown_option"   # this entry skipped, the message goes on
        q += plen
    flags = (flags & IP_VS_CONN_F_BACKUP_MASK) | 0x0020           # | IP_VS_CONN_F_SYNC
    if not flags & 0x1000:
        if protocol not in NUM_STATES:
            return "sync_bad_protocol"
        if state >= NUM_STATES[protocol]:
            return "sync_bad_state"
    if pe_data is not None and (pe_name is None or pe_name.decode("latin-1") not in known_pe):
        return "sync_no_pe"
    return SyncEntry(protocol, flags, state, bytes(caddr), cport, bytes(vaddr), vport,
                     bytes(daddr), dport, fwmark, timeout,
                     seq[0] if seq else None, seq[1] if seq else None, pe_data, pe_name, ipv6)
