"""A BMC for tests: pyghmi's own IPMI server in front of an imaginary machine whose power
state and boot device live in memory (the same server code virtualbmc is built on).

Run as ``python -m tests.integration.ipmi_bmc USERNAME PASSWORD [POWER_DELAY]``; it listens
on 127.0.0.1 on a free UDP port, prints ``ready PORT``, then one line per change the
machine sees (``power on``, ``power off``, ``bootdev network persistent``), so a test can
check what really happened and in which order. A power change takes effect
``POWER_DELAY`` seconds (default 0.3) after the command, like a real machine or
virtualbmc (1.4 to 2.6 s), so a driver that does not wait for it is caught.
SIGUSR1 makes the BMC silent (it drops new logins and commands), SIGUSR2 makes it answer
again: a BMC that stops answering without piling up packets (after SIGSTOP, pyghmi's server
dies on the backlog: see docs/baremetal.md "IPMI").
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from pyghmi.ipmi import bmc  # type: ignore[import-untyped]


class MemoryBmc(bmc.Bmc):  # type: ignore[misc]
    def __init__(self, username: str, password: str, power_delay: float) -> None:
        super().__init__({username: password}, port=0, address="127.0.0.1")
        # pyghmi routes packets by self.port: make it the port the kernel chose.
        self.port = self.serversocket.getsockname()[1]
        self.power_delay = power_delay
        self.power = "off"
        self.bootdev = "default"
        self.persistent = False
        self.silent = False
        self._lock = threading.Lock()

    def sessionless_data(self, data: bytes, sockaddr: Any) -> None:
        if not self.silent:  # where a new login starts
            super().sessionless_data(data, sockaddr)

    def handle_raw_request(self, request: dict[str, Any], session: Any) -> None:
        if not self.silent:
            super().handle_raw_request(request, session)

    def get_power_state(self) -> str:
        with self._lock:
            return self.power

    def power_on(self) -> None:
        self._power_later("on")

    def power_off(self) -> None:
        self._power_later("off")

    def _power_later(self, state: str) -> None:
        def change() -> None:
            with self._lock:
                if self.power == state:
                    return
                self.power = state
            print(f"power {state}", flush=True)

        threading.Timer(self.power_delay, change).start()

    def get_boot_device(self) -> str:
        return self.bootdev

    def set_system_boot_options(self, request: dict[str, Any], session: Any) -> None:
        # pyghmi's server drops the persistent bit; keep it so a test can see it was asked.
        if request["data"][0] == 5:
            self.persistent = bool(request["data"][1] & 0x40)
        super().set_system_boot_options(request, session)

    def set_boot_device(self, bootdevice: str) -> None:
        self.bootdev = bootdevice
        kind = "persistent" if self.persistent else "once"
        print(f"bootdev {bootdevice} {kind}", flush=True)


def main() -> None:
    username, password = sys.argv[1:3]
    power_delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.3
    server = MemoryBmc(username, password, power_delay)
    signal.signal(signal.SIGUSR1, lambda *_: setattr(server, "silent", True))
    signal.signal(signal.SIGUSR2, lambda *_: setattr(server, "silent", False))
    print(f"ready {server.port}", flush=True)
    server.listen(timeout=30)


if __name__ == "__main__":
    main()
