"""The daemon's event loop: file descriptors, timers and signals, no busy waiting.

One selector waits on everything: the control socket, the packet ports, and
a wake-up socket that signal handlers write to (signal.set_wakeup_fd), so a
SIGTERM interrupts the wait at once. The wait ends at the earliest deadline
any timer source names (the engine's connection and estimator timers, ARP
retries); with nothing due and nothing arriving, the process sleeps.
"""

import selectors
import signal
import socket


class Loop:
    def __init__(self, clock):
        self.clock = clock
        self.sel = selectors.DefaultSelector()
        self.deadlines = []      # callables returning the next deadline or None
        self.on_timer = []       # callables(now), run when a deadline passes
        self.stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        self.add_reader(self._wake_r, self._drain)

    def add_reader(self, fileobj, callback):
        """callback() runs when fileobj is readable."""
        self.sel.register(fileobj, selectors.EVENT_READ, callback)

    def remove_reader(self, fileobj):
        self.sel.unregister(fileobj)

    def add_writer(self, fileobj, callback):
        """callback() runs when fileobj can be written to (one registration per file:
        a file is either a reader or a writer at a time)."""
        self.sel.register(fileobj, selectors.EVENT_WRITE, callback)

    remove_writer = remove_reader

    def add_timer(self, deadline, callback):
        self.deadlines.append(deadline)
        self.on_timer.append(callback)

    def _drain(self):
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:
            pass

    def _timeout(self):
        times = [t for t in (d() for d in self.deadlines) if t is not None]
        if not times:
            return None
        return max(0.0, min(times) - self.clock())

    def run(self):
        """Until stop() or SIGTERM/SIGINT."""
        def on_signal(signum, frame):
            self.stopping = True

        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno())
        old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not self.stopping:
                timeout = self._timeout()
                for key, _ in self.sel.select(timeout):
                    key.data()
                    if self.stopping:
                        return
                due = self._timeout()
                if due is not None and due <= 0.0:
                    now = self.clock()
                    for callback in self.on_timer:
                        callback(now)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def stop(self):
        self.stopping = True

    def close(self):
        self.sel.close()
        self._wake_r.close()
        self._wake_w.close()
