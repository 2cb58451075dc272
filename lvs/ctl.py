"""The control socket: how lvsadm talks to `lvs daemon`.

A Unix stream socket, root-only (mode 0600 in a 0700 directory). One request
per connection: the client sends one JSON object and a newline, the daemon
answers with one JSON object and a newline, and closes. Version 1:

  {"pylvs": 1, "op": "adm", "argv": [...], "stdin": "..."}
      -> {"pylvs": 1, "stdout": "...", "stderr": "...", "status": N}
      one ipvsadm command line (without the program name) run against the
      daemon's tables; stdin is what `-R` reads.
  {"pylvs": 1, "op": "replace", "stdin": "..."}
      -> as "adm": lvsadm-restore, i.e. `-C` then `-R`, done only if the whole
      input restores cleanly (otherwise nothing changes).
  {"pylvs": 1, "op": "feed", "path": "/abs/capture.pcap"}
      -> {"pylvs": 1, "status": 0, "packets": N, "sent": N, "drops": {...}}
      a capture run through the engine as `lvs replay` runs it.
  {"pylvs": 1, "op": "stats"}
      -> {"pylvs": 1, "drops": {...}, "director": {...} or null, "sync": {...},
          "conns": N, "defense": {...}}
      the engine's drop counters, with --iface the live side's counters
      (ARP answers, frames to the engine, sent, ring drops per port, vip_owner...),
      the sync daemons' counters (lvs/sync.py, lvs/syncmsg.py's REASONS), the
      entries in the connection table and the defense modes' state (lvs/defense.py).
  {"pylvs": 1, "op": "top"}
      -> {"pylvs": 1, "pid": N, "services": [...], "drops": {...}, "director": {...} or null}
      what `lvs top` draws (lvs/top.py snapshot): each service in ipvsadm -Ln's order with
      its scheduler, counts and estimator rates [cps, inpps, outpps, inbps, outbps], and
      its real servers (name, fwd, weight, active, inactive, rates); with --workers added up.
  {"pylvs": 1, "op": "sysctl", "set": {"name": "value", ...}}
      -> {"pylvs": 1, "values": {...}}   all of "set" or none; the sysctls after it
  {"pylvs": 1, "op": "vips", "own": true|false}
      -> {"pylvs": 1, "owner": bool, "gratuitous_arp": N}
      answer ARP for the VIPs (announced by gratuitous ARP) or leave them to
      another director: `lvs daemon --own-vips/--release-vips`.
  {"pylvs": 1, "op": "ping"}  -> {"pylvs": 1, "pid": N, "version": "..."}
  {"pylvs": 1, "op": "stop"}  -> {"pylvs": 1, "stopping": true}

An answer to a request the daemon cannot read is {"pylvs": 1, "error": "..."}: not
UTF-8, not JSON (NaN and Infinity are not; integers have at most 4300 digits; nesting
too deep), not an object, fields of the wrong type, more than MAX_REQUEST bytes without
a newline (answered, then the connection is closed unread), no complete request within
10 s (daemon.CLIENT_TIMEOUT), more than 64 connections open at once ("busy"). The
daemon serves every connection without blocking, so a slow or silent client delays no
other; the requests themselves are carried out one at a time, each whole, in the order
they are complete. The request ends at its first newline, or at the end of what the
client sends (shutdown(SHUT_WR)); anything after the newline is ignored.
"""

import json
import os
import socket

PROTOCOL = 1
MAX_REQUEST = 16 * 1024 * 1024


def socket_path(explicit=None):
    """--socket wins over LVS_SOCKET, which wins over the default.

    The default is per network namespace: in `ip netns exec NAME` it is
    /run/pylvs/netns-NAME/lvs.sock, so each namespace's director and lvsadm
    find each other with no flags (/run is shared between namespaces).
    """
    if explicit or os.environ.get("LVS_SOCKET"):
        return explicit or os.environ.get("LVS_SOCKET")
    from .hostconf import run_dir
    return os.path.join(run_dir(), "lvs.sock")


class NoDaemon(Exception):
    """Nothing answers on the socket."""


def request(path, message, timeout=30.0):
    """Send one request, return the decoded answer; NoDaemon if nobody listens."""
    message = dict(message, pylvs=PROTOCOL)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as e:
            raise NoDaemon(e.strerror or str(e))
        s.sendall(json.dumps(message).encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        data = read_line(s, limit=None)   # an answer can be long (-Lnc)
    finally:
        s.close()
    if not data:
        raise NoDaemon("the daemon closed the connection")
    return json.loads(data.decode())


def read_line(sock, limit=MAX_REQUEST):
    """One line from `sock` (without its newline), ended by a newline or the end of the
    stream; reading stops beyond `limit` bytes (None: no limit)."""
    chunks, size = [], 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n") or (limit is not None and size > limit):
            break
    return b"".join(chunks).rstrip(b"\n")


def alive(path, timeout=2.0):
    """Does a daemon answer on `path`?"""
    try:
        return "pid" in request(path, {"op": "ping"}, timeout)
    except (NoDaemon, OSError, ValueError):
        return False
