"""Runs the server: in this process, or as N worker processes sharing the port (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio

from service.config import Settings
from service.server import RunningServer


def run_server(settings: Settings) -> int:
    return asyncio.run(RunningServer(settings).run())
