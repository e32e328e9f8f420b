"""A real network partition between the workers under test and a private PostgreSQL server.

Workers connect through ``127.0.0.2``; the test itself uses ``127.0.0.1``. ``cut()`` makes iptables
drop, silently, every TCP packet to or from the server's port on ``127.0.0.2``: open connections
hang and new ones time out, as across a broken network, while ``127.0.0.1`` keeps working.

A client connecting to ``127.0.0.2`` gets source address ``127.0.0.1`` (the kernel picks the
loopback route's ``src``), so the rules match the server side of the connection (destination
``127.0.0.2:port`` inbound, source ``127.0.0.2:port`` outbound), never ``127.0.0.1`` alone.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.cluster import HOSTS, Cluster

PARTITIONED_HOST = HOSTS[1]


class PartitionUnavailable(RuntimeError):
    """iptables is missing or refused (not root, no netfilter in this kernel or container)."""


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # -w: wait for the xtables lock rather than fail when another iptables runs.
    result = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"iptables {' '.join(args)} failed: {result.stderr.strip()}")
    return result


class Partition:
    """Cuts and heals the connections to ``host:port``, through rules in a chain of its own."""

    def __init__(self, port: int, host: str = PARTITIONED_HOST) -> None:
        if shutil.which("iptables") is None:
            raise PartitionUnavailable("iptables is not installed (apt-get install iptables)")
        self.port = port
        self.host = host
        self.chain = f"PGJOBS_PART_{port}"
        self._remove()  # left over by a run that was killed
        created = _iptables("-N", self.chain, check=False)
        if created.returncode != 0:
            raise PartitionUnavailable(f"iptables refused to create a chain: {created.stderr.strip()}")
        try:
            # Loopback packets pass OUTPUT and then INPUT; dropping them in INPUT only lets the
            # sender's kernel see a normal transmission, as when a remote network loses a packet
            # (a drop in OUTPUT returns EPERM to the sending socket instead).
            _iptables("-I", "INPUT", "1", "-j", self.chain)
        except RuntimeError as exc:
            self._remove()
            raise PartitionUnavailable(str(exc)) from None

    def cut(self) -> None:
        """Drop every packet between clients and ``host:port``, both ways, from now on."""
        self.heal()
        port = str(self.port)
        _iptables("-A", self.chain, "-p", "tcp", "-d", self.host, "--dport", port, "-j", "DROP")
        _iptables("-A", self.chain, "-p", "tcp", "-s", self.host, "--sport", port, "-j", "DROP")

    def heal(self) -> None:
        """Let packets through again; connections that survived the cut resume."""
        _iptables("-F", self.chain)

    @property
    def is_cut(self) -> bool:
        return len(_iptables("-S", self.chain).stdout.splitlines()) > 1

    def close(self) -> None:
        """Remove the chain and the jump to it."""
        self._remove()

    def _remove(self) -> None:
        while _iptables("-D", "INPUT", "-j", self.chain, check=False).returncode == 0:
            pass
        _iptables("-F", self.chain, check=False)
        _iptables("-X", self.chain, check=False)

    def __enter__(self) -> Partition:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def partition(cluster: Cluster) -> Iterator[Partition]:
    """A partition between ``cluster`` as reached through 127.0.0.2 and its clients, healed at first."""
    try:
        part = Partition(cluster.port)
    except PartitionUnavailable as exc:
        pytest.skip(f"cannot cut the network: {exc}")
    with part:
        yield part
