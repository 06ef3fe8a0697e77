"""A server process for crash tests: its handler records the start of work, then hangs.

Run as ``python -m tests.integration.slow_server URL EXCHANGE TOPIC``; prints ``ready``.
"""

from __future__ import annotations

import sys
import threading
import time

from libs import rpc


class Hanging:
    RPC_API_VERSION = "1.0"

    @rpc.expose
    def work(self, ctxt: rpc.RequestContext, job: str) -> None:
        print(f"started {job}", flush=True)
        time.sleep(3600)


def main() -> None:
    url, exchange, topic = sys.argv[1:4]
    transport = rpc.AMQPTransport(url, exchange=exchange)
    server = rpc.RPCServer(transport, rpc.Target(topic, server="doomed"), [Hanging()])
    server.start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
