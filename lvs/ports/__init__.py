"""Packet interfaces: the only modules of pylvs that hold file descriptors.

Every port has the same small shape, so the loop (lvs/loop.py) can drive
any of them and hand the engine batches:

  port.fileno()          for the selector: readable when frames are waiting
  port.recv_batch(n)     up to n frames as a list of bytes (never blocks;
                         [] when nothing is waiting)
  port.send(data)        one frame; False if the kernel refused it (counted)
  port.close()
  port.name, port.kind   the interface's name; "ether" (Ethernet frames,
                         AF_PACKET) or "ip" (bare IP packets, TUN)
  port.counters          dict: rx, tx, tx_errors, rx_ring_drops

recv_batch raises PortGone when the interface it was bound to no longer
exists (a link that only went down and up again goes on working).

Everything the engine decides stays in the engine; ports only move bytes.
"""

from .raw import PortGone, RawPort
from .tun import TunPort

__all__ = ["PortGone", "RawPort", "TunPort"]
