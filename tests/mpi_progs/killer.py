import os, signal
import horn


class KillAt(horn.Layer):
    """Identity; SIGKILLs its own process at training forward number HORN_TEST_KILL_AT
    on the rank named by HORN_TEST_KILL_RANK (a fault injector for tests)."""

    def forward(self, x, train):
        if train:
            self.calls = getattr(self, "calls", 0) + 1
            if (os.environ.get("HORN_TEST_KILL_RANK") == os.environ.get("OMPI_COMM_WORLD_RANK")
                    and str(self.calls) == os.environ.get("HORN_TEST_KILL_AT")):
                os.kill(os.getpid(), signal.SIGKILL)
        return x

    def backward(self, dy):
        return dy
