import os
import signal
import time

import horn


class KillAt(horn.Layer):
    """Identity, and a fault injector for tests: at training forward number
    HORN_TEST_KILL_AT, on the rank named by HORN_TEST_KILL_RANK, it does what
    HORN_TEST_FAULT says: "kill" (SIGKILL itself, the default), "raise", "hang", or
    "slow" (from then on, sleep HORN_TEST_SLOW_S seconds in every forward: a straggler)."""

    partition_role = "through"  # the identity: sub-networks may carry a partition through it

    def forward(self, x, train):
        if train:
            self.calls = getattr(self, "calls", 0) + 1
            mine = os.environ.get("HORN_TEST_KILL_RANK") == os.environ.get("OMPI_COMM_WORLD_RANK")
            if mine and os.environ.get("HORN_TEST_FAULT") == "slow":
                if self.calls >= int(os.environ.get("HORN_TEST_KILL_AT", "1")):
                    time.sleep(float(os.environ.get("HORN_TEST_SLOW_S", "0.02")))
            elif mine and str(self.calls) == os.environ.get("HORN_TEST_KILL_AT"):
                fault = os.environ.get("HORN_TEST_FAULT", "kill")
                if fault == "raise":
                    raise RuntimeError("injected fault")
                if fault == "hang":
                    time.sleep(3600)
                os.kill(os.getpid(), signal.SIGKILL)
        return x

    def backward(self, dy):
        return dy
