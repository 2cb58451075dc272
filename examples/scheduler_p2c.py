"""Power of two choices: draw two real servers, keep the one less loaded per weight.

    lvs replay --scheduler-path examples/scheduler_p2c.py --rules R IN    (R: -A ... -s p2c)
"""

import random

from schedulers._base import Scheduler, usable


class PowerOfTwoChoices(Scheduler):
    name = "p2c"

    def __init__(self, svc, config=None):
        super().__init__(svc, config)
        self.rng = random.Random(0)   # seeded: a replay gives the same picks every time

    def schedule(self, svc, pkt, now):
        dests = [d for d in svc.destinations if usable(d)]   # weight > 0, not overloaded
        if not dests:
            return None                                      # the client hears port unreachable
        a, b = self.rng.choice(dests), self.rng.choice(dests)
        # overhead()/weight, compared without dividing: b wins only if strictly lighter
        return b if b.overhead() * a.weight < a.overhead() * b.weight else a
