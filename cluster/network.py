"""The one free-port helper (no Ray here: tests and tools use it without a cluster)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port nobody on this host listens on right now (a rendezvous master will bind it)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]
