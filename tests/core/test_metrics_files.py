"""The --workers aggregate of /metrics survives files it cannot read: a worker killed in the middle of a write,
or one restarted while its file is being created, must not fail every scrape."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest
from onnx_serve.core.metrics import TolerantMultiProcessCollector
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict


def test_an_unreadable_worker_file_is_left_out_not_the_scrape(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                               ) -> None:
    good = MmapedDict(str(tmp_path / "counter_1.db"))
    good.write_value('["onnx_serve_x", "onnx_serve_x_total", {}, "help"]', 3.0, 0.0)
    good.close()
    (tmp_path / "counter_2.db").write_bytes(struct.pack("i", 64) + b"\x00" * 4 + struct.pack("i", 90) + b"{not json")
    (tmp_path / "counter_3.db").write_bytes(b"")  # being created
    registry = CollectorRegistry()
    TolerantMultiProcessCollector(registry, str(tmp_path))
    with caplog.at_level(logging.WARNING, "onnx_serve.metrics"):
        text = generate_latest(registry).decode()
        generate_latest(registry)
    assert "onnx_serve_x_total 3.0" in text
    left_out = [r.message for r in caplog.records if "leaving out" in r.message]
    assert len(left_out) == 2 and all("counter_1" not in m for m in left_out)  # once per file, not per scrape
