"""What a test host does inside its network namespace, with nothing but Python (no ping,
nc or tcpdump on the machine needed): ICMP echo, a TCP echo server and client, and a
sniffer that counts the frames a given MAC sent.

Run as ``ip netns exec NS python -m tests.integration.nethost COMMAND ...``; each command
prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import time

ETH_P_ALL = 0x0003


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(
    destination: str, count: int, interval: float, timeout: float, *, until_answered: bool = False
) -> dict[str, float]:
    """ICMP (or ICMPv6) echo requests to ``destination``; how many were answered, and when
    the first answer came (``time.monotonic()``, which every namespace shares). With
    ``until_answered``, it stops at the first answer."""
    ident = os.getpid() & 0xFFFF
    ipv6 = ":" in destination
    request, reply = (128, 129) if ipv6 else (8, 0)
    family, protocol = (
        (socket.AF_INET6, socket.IPPROTO_ICMPV6) if ipv6 else (socket.AF_INET, socket.IPPROTO_ICMP)
    )
    received = 0
    first_answer = 0.0
    sent = 0
    with socket.socket(family, socket.SOCK_RAW, protocol) as sock:
        print(json.dumps({"ready": time.monotonic()}), flush=True)
        for sequence in range(count):
            payload = b"tetsu-openflow-test"
            header = struct.pack("!BBHHH", request, 0, 0, ident, sequence)
            # The kernel fills in an ICMPv6 checksum itself (it covers the IPv6 header).
            checksum = 0 if ipv6 else _checksum(header + payload)
            packet = struct.pack("!BBHHH", request, 0, checksum, ident, sequence) + payload
            sent_at = time.monotonic()
            sock.sendto(packet, (destination, 0))
            sent += 1
            deadline = sent_at + timeout
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    break
                data, _ = sock.recvfrom(2048)
                start = 0 if ipv6 else (data[0] & 0x0F) * 4  # raw IPv4 includes the header
                kind, _, _, reply_ident, reply_sequence = struct.unpack(
                    "!BBHHH", data[start : start + 8]
                )
                if kind == reply and reply_ident == ident:
                    # A late answer to an earlier request counts too (it was queued
                    # behind ARP, say); only the current one ends the wait.
                    received += 1
                    first_answer = first_answer or time.monotonic()
                    if reply_sequence == sequence:
                        break
            if until_answered and received:
                break
            rest = interval - (time.monotonic() - sent_at)
            if rest > 0 and sequence < count - 1:
                time.sleep(rest)
    return {"sent": sent, "received": received, "first_answer": first_answer}


def tcp_serve(port: int, seconds: float) -> dict[str, int]:
    """Echo what each connection sends, for ``seconds`` (a first line says it listens)."""
    served = 0
    with socket.create_server(("0.0.0.0", port)) as server:
        print(json.dumps({"listening": port}), flush=True)  # the client may connect now
        server.settimeout(0.2)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(2)
                data = connection.recv(1024)
                connection.sendall(data)
                served += 1
    return {"served": served}


def tcp_connect(destination: str, port: int, timeout: float) -> dict[str, bool]:
    """Whether a TCP connection to ``destination:port`` carries a message there and back."""
    try:
        with socket.create_connection((destination, port), timeout=timeout) as sock:
            sock.sendall(b"hello over openflow")
            return {"ok": sock.recv(1024) == b"hello over openflow"}
    except OSError:
        return {"ok": False}


def sniff(interface: str, mac: str, seconds: float) -> dict[str, int]:
    """Frames sent by ``mac`` seen on ``interface`` within ``seconds``, and how many were
    broadcast."""
    source = bytes.fromhex(mac.replace(":", ""))
    frames = broadcasts = 0
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as sock:
        sock.bind((interface, 0))
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            frame = sock.recv(65535)
            if frame[6:12] == source:
                frames += 1
                broadcasts += frame[0:6] == b"\xff" * 6
    return {"frames": frames, "broadcasts": broadcasts}


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("ping")
    command.add_argument("destination")
    command.add_argument("--count", type=int, default=1)
    command.add_argument("--interval", type=float, default=0.2)
    command.add_argument("--timeout", type=float, default=1.0)
    command.add_argument("--until-answered", action="store_true")
    command = commands.add_parser("tcp-serve")
    command.add_argument("port", type=int)
    command.add_argument("--seconds", type=float, default=10.0)
    command = commands.add_parser("tcp-connect")
    command.add_argument("destination")
    command.add_argument("port", type=int)
    command.add_argument("--timeout", type=float, default=2.0)
    command = commands.add_parser("sniff")
    command.add_argument("interface")
    command.add_argument("mac")
    command.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    if args.command == "ping":
        result: object = ping(
            args.destination,
            args.count,
            args.interval,
            args.timeout,
            until_answered=args.until_answered,
        )
    elif args.command == "tcp-serve":
        result = tcp_serve(args.port, args.seconds)
    elif args.command == "tcp-connect":
        result = tcp_connect(args.destination, args.port, args.timeout)
    else:
        result = sniff(args.interface, args.mac, args.seconds)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
