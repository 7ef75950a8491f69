"""Test hosts in network namespaces: a bridge on this machine, one namespace per "host",
each joined to the bridge by a veth pair. Services the hosts need listen on the bridge's
address (or are reached through :func:`tcp_proxy`). Everything made here is removed on
the way out. Needs root and iproute2 (``ip``), as this project's CI has."""

from __future__ import annotations

import os
import random
import select
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True)
class HostNetwork:
    """The bridge's address (the services' side) and each host's namespace and address."""

    host_ip: str
    hosts: dict[str, str]  # namespace -> address
    links: dict[str, str] = field(default_factory=dict)  # namespace -> its bridge port

    def prefix(self, namespace: str) -> list[str]:
        """The command prefix that runs a program on that host."""
        return ["ip", "netns", "exec", namespace]

    def disconnect(self, namespace: str) -> None:
        """Pull that host's cable: its bridge port goes down, so every packet to or from
        it is dropped (no reset: its peers' connections just go silent)."""
        _ip("link", "set", self.links[namespace], "down")

    def reconnect(self, namespace: str) -> None:
        """Plug that host's cable back in."""
        _ip("link", "set", self.links[namespace], "up")


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
    links: dict[str, str] = {}
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
            hosts[namespace], links[namespace] = address, outer
        yield HostNetwork(host_ip=host_ip, hosts=hosts, links=links)
    finally:
        for kind, name in reversed(made):
            subprocess.run(
                ["ip", kind, "del", name] if kind == "netns" else ["ip", "link", "del", name],
                capture_output=True,
                check=False,  # best effort: remove what exists
            )


class TcpProxy:
    """Forwards TCP connections from ``listen`` to ``target`` in background threads, and
    can be cut: :meth:`cut` drops every open connection and refuses new ones (nothing
    listens on the port), :meth:`restore` listens again on the same address."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.listen, self.target = listen, target
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._stop = threading.Event()
        self._server: socket.socket | None = None
        self.restore()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def is_cut(self) -> bool:
        """True while connections are refused."""
        return self._server is None

    def cut(self) -> int:
        """Close the listening socket and every forwarded connection (both ends, with a
        reset); returns how many connections were dropped."""
        with self._lock:
            server, self._server = self._server, None
            dropped = list(self._open)
            self._open.clear()
        if server is not None:
            server.close()
        for sock in dropped:
            _reset(sock)
        return len(dropped) // 2

    def restore(self) -> None:
        """Listen on ``listen`` again."""
        with self._lock:
            if self._server is None:
                server = socket.create_server(self.listen)
                server.setblocking(False)
                self._server = server

    def upstream_ports(self) -> set[int]:
        """Local ports of the proxy's open connections to ``target`` (how the target
        sees the proxied clients, e.g. in Redis's CLIENT LIST)."""
        with self._lock:
            sockets = list(self._open)
        ports = set()
        for sock in sockets:
            try:
                if sock.getpeername()[1] == self.target[1]:
                    ports.add(int(sock.getsockname()[1]))
            except OSError:
                continue  # closed meanwhile
        return ports

    def close(self) -> None:
        """Stop forwarding for good."""
        self._stop.set()
        self.cut()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            server = self._server
            if server is None:
                self._stop.wait(0.05)
                continue
            try:
                ready, _, _ = select.select([server], [], [], 0.2)
                if not ready:
                    continue
                client, _ = server.accept()
            except (OSError, ValueError):  # closed by cut() meanwhile
                continue
            self._forward(client)

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            if self._server is None:  # cut while connecting
                _reset(client)
                upstream.close()
                return
            self._open.update((client, upstream))
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([a, b], [], [], 0.2)
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    (b if src is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._open.difference_update((a, b))
            a.close()
            b.close()


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a dropped connection looks to its peer."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


@contextmanager
def tcp_proxy(listen: tuple[str, int], target: tuple[str, int]) -> Iterator[TcpProxy]:
    """Forward TCP connections from ``listen`` to ``target`` (e.g. to a server that only
    listens on loopback) until the block exits; yields the proxy, which can be cut."""
    proxy = TcpProxy(listen, target)
    try:
        yield proxy
    finally:
        proxy.close()
