"""Test hosts in network namespaces: a bridge on this machine, one namespace per "host",
each joined to the bridge by a veth pair. Services the hosts need listen on the bridge's
address (or are reached through :func:`tcp_proxy`). Everything made here is removed on
the way out. Needs root and iproute2 (``ip``), as this project's CI has."""

from __future__ import annotations

import os
import random
import select
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class HostNetwork:
    """The bridge's address (the services' side) and each host's namespace and address."""

    host_ip: str
    hosts: dict[str, str]  # namespace -> address

    def prefix(self, namespace: str) -> list[str]:
        """The command prefix that runs a program on that host."""
        return ["ip", "netns", "exec", namespace]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _free_subnet() -> int:
    routes = subprocess.run(
        ["ip", "-4", "route"], capture_output=True, text=True, check=True
    ).stdout
    for _ in range(50):
        octet = random.randint(1, 254)
        if f"10.251.{octet}." not in routes:
            return octet
    raise RuntimeError("no free 10.251.x.0/24 subnet for the test network")


@contextmanager
def host_network(n_hosts: int) -> Iterator[HostNetwork]:
    """A bridge and ``n_hosts`` namespaces attached to it."""
    tag = f"{os.getpid() % 100_000}{random.randint(0, 99):02d}"
    bridge, octet = f"pynbr{tag}", _free_subnet()
    host_ip = f"10.251.{octet}.1"
    hosts: dict[str, str] = {}
    made: list[tuple[str, str]] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        made.append(("link", bridge))
        _ip("addr", "add", f"{host_ip}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for index in range(n_hosts):
            namespace, outer, inner = f"pyn{tag}h{index}", f"pv{tag}h{index}", f"pv{tag}n{index}"
            _ip("netns", "add", namespace)
            made.append(("netns", namespace))
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            made.append(("link", outer))
            _ip("link", "set", outer, "master", bridge)
            _ip("link", "set", outer, "up")
            _ip("link", "set", inner, "netns", namespace)
            address = f"10.251.{octet}.{index + 2}"
            for args in (
                ("addr", "add", f"{address}/24", "dev", inner),
                ("link", "set", inner, "up"),
                ("link", "set", "lo", "up"),
            ):
                _ip("netns", "exec", namespace, "ip", *args)
            hosts[namespace] = address
        yield HostNetwork(host_ip=host_ip, hosts=hosts)
    finally:
        for kind, name in reversed(made):
            subprocess.run(
                ["ip", kind, "del", name] if kind == "netns" else ["ip", "link", "del", name],
                capture_output=True,
                check=False,  # best effort: remove what exists
            )


@contextmanager
def tcp_proxy(listen: tuple[str, int], target: tuple[str, int]) -> Iterator[None]:
    """Forward TCP connections from ``listen`` to ``target`` (e.g. to a server that only
    listens on loopback), in a background thread."""
    server = socket.create_server(listen)
    server.setblocking(False)
    stop = threading.Event()

    def pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while not stop.is_set():
                ready, _, _ = select.select([a, b], [], [], 0.2)
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    (b if src is a else a).sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()

    def accept() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([server], [], [], 0.2)
            if not ready:
                continue
            client, _ = server.accept()
            try:
                upstream = socket.create_connection(target, timeout=5)
            except OSError:
                client.close()
                continue
            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()
