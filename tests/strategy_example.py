"""A strategy written as a user would, outside horn: one-shot averaging.

Ranks train on their own and average their parameters only every ``rounds``-th
barrier and at the very end (Zinkevich et al.'s one-shot averaging, with a knob).
Defining it touches neither the job loader, the runner nor the trainer.
"""

from dataclasses import dataclass

from horn.barriers import PeerSync, register_strategy
from horn.barriers.average import average
from horn.barriers.registry import NoSettings
from horn.jobs import opt


@dataclass(frozen=True)
class OneShotSettings(NoSettings):
    rounds: int = opt(0, int, lo=0)  # also average every this many rounds (0: only at the end)


@register_strategy("oneshot", OneShotSettings)
def build(setup, settings, inner):
    return OneShotSync(setup, settings.rounds)


class OneShotSync(PeerSync):
    def __init__(self, setup, rounds):
        super().__init__(setup.peer)
        self.model, self.optimizer = setup.model, setup.optimizer
        self.local_steps, self.total_steps, self.rounds = (
            setup.local_steps,
            setup.total_steps,
            rounds,
        )
        self.done = 0

    def after_step(self, step):
        self.done = step + 1
        round_ = self.done // self.local_steps
        due = self.rounds and self.done % self.local_steps == 0 and round_ % self.rounds == 0
        if due or self.done == self.total_steps:
            average(self.peer, self.model, self.optimizer, False, "world")
            self.peer.sync()
            self.boundary_at = self.done
