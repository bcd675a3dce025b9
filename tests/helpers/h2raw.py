"""Raw HTTP/2 for the adversarial suite: a gRPC client spoken by hand with h2 (and hand-made frames), so that a test
can do what gRPC libraries never do: send compressed bombs, leave messages unfinished, never read its answers, never
open its window, flood header blocks. tests/system/test_transport_bombs.py and the adversarial soak use it."""

from __future__ import annotations

import asyncio
import struct
from contextlib import suppress
from dataclasses import dataclass, field

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
from hpack.hpack import encode_integer

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, RST_STREAM, SETTINGS, GOAWAY, CONTINUATION, ACK, END_HEADERS = 0x1, 0x3, 0x4, 0x7, 0x9, 0x1, 0x4
STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def grpc_message(payload: bytes, compressed: bool = False) -> bytes:
    """On the wire: the compressed flag, the 4-byte big-endian length, the payload."""
    return struct.pack(">BI", compressed, len(payload)) + payload


@dataclass
class Outcome:
    """How the server ended one stream: a grpc-status, a RST_STREAM, or the connection closed under it."""

    headers: dict[str, str] = field(default_factory=dict)
    reset: int | None = None
    closed: bool = False

    @property
    def done(self) -> bool:
        return "grpc-status" in self.headers or self.reset is not None or self.closed

    @property
    def status(self) -> str:
        if "grpc-status" in self.headers:
            return STATUS_NAMES[int(self.headers["grpc-status"])]
        return f"RST_STREAM({self.reset})" if self.reset is not None else "CLOSED" if self.closed else "PENDING"


class RawConnection:
    """An HTTP/2 connection spoken with h2, so that the client can do what gRPC libraries never do. It reads the
    server's frames in the background; with `read` false it never acknowledges the data it receives, so the
    server's window towards it shuts: a client that never reads its answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, read: bool) -> None:
        self.reader, self.writer, self.read = reader, writer, read
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.outcomes: dict[int, Outcome] = {}
        self.changed = asyncio.Event()
        self.closed = False
        self.reading: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, port: int, read: bool = True, window: int | None = None) -> RawConnection:
        """`window`: the initial stream window this client grants the server (0: not a byte of any answer)."""
        connection = cls(*await asyncio.open_connection("127.0.0.1", port), read=read)
        connection.h2.initiate_connection()
        if window is not None:
            connection.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        await connection.flush()
        connection.reading = asyncio.create_task(connection._read_frames())
        return connection

    async def flush(self) -> None:
        if (data := self.h2.data_to_send()) and not self.closed:
            try:
                self.writer.write(data)
                await self.writer.drain()
            except OSError:
                self._close()

    def _close(self) -> None:
        self.closed = True
        for outcome in self.outcomes.values():
            outcome.closed = True
        self.changed.set()

    async def _read_frames(self) -> None:
        with suppress(OSError, h2.exceptions.ProtocolError):
            while data := await self.reader.read(256 * 1024):
                for event in self.h2.receive_data(data):
                    outcome = self.outcomes.get(getattr(event, "stream_id", 0))
                    if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)) and outcome:
                        outcome.headers.update({str(k): str(v) for k, v in event.headers})
                    elif isinstance(event, h2.events.StreamReset) and outcome:
                        outcome.reset = event.error_code
                    elif isinstance(event, h2.events.DataReceived) and self.read:
                        self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                await self.flush()
                self.changed.set()
        self._close()

    async def start(self, path: str, gzip_encoded: bool = False) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        self.outcomes[stream_id] = Outcome(closed=self.closed)
        if not self.closed:
            self.h2.send_headers(stream_id, [
                (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "127.0.0.1"),
                ("content-type", "application/grpc"), ("te", "trailers"),
                *([("grpc-encoding", "gzip")] if gzip_encoded else [])])
            await self.flush()
        return stream_id

    async def send(self, stream_id: int, data: bytes, end_stream: bool = False, stall_s: float = 5.0) -> int:
        """Sends `data` as the flow-control windows allow; returns how much went: all of it, or what went before
        the stream ended or the windows stayed shut for `stall_s`."""
        sent = 0
        while sent < len(data) and not self.outcomes[stream_id].done:
            try:
                window = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                break
            if window <= 0:
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), stall_s)
                except TimeoutError:
                    break
                continue
            chunk = data[sent:sent + window]
            try:
                self.h2.send_data(stream_id, chunk, end_stream=end_stream and sent + len(chunk) == len(data))
            except h2.exceptions.H2Error:
                break
            sent += len(chunk)
            await self.flush()
        return sent

    async def outcome(self, stream_id: int, timeout: float = 20.0) -> Outcome:
        async with asyncio.timeout(timeout):
            while not self.outcomes[stream_id].done:
                self.changed.clear()
                await self.changed.wait()
        return self.outcomes[stream_id]

    async def close(self) -> None:
        if self.reading:
            self.reading.cancel()
        self.writer.close()
        with suppress(OSError):
            await self.writer.wait_closed()


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id) + payload


class HeaderFlood:
    """A connection whose only stream sends a header block that never ends: HEADERS without END_HEADERS, then
    CONTINUATION frames of 4 KiB headers, nothing else in between (which HTTP/2 requires, so that the server cannot
    refuse it at the frame level). With `acknowledge` it first acknowledges the server's SETTINGS, as every real
    client does; without, the server still applies the protocol's defaults."""

    BLOCK = hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"), (":path", MODEL_INFER),
                                    (":authority", "127.0.0.1"), ("content-type", "application/grpc"),
                                    ("te", "trailers")])
    PADDING = (b"\x00" + bytes(encode_integer(7, 7)) + b"x-flood" + bytes(encode_integer(4000, 7)) + b"a" * 4000) * 4

    def __init__(self) -> None:
        self.settings_received = asyncio.Event()  # (or the connection ended)
        self.answered = asyncio.Event()  # anything about stream 1, or the connection ending
        self.outcome = "PENDING"  # of stream 1
        self.statuses: dict[int, tuple[str, str]] = {}  # stream -> grpc-status, grpc-message

    async def connect(self, port: int, acknowledge: bool) -> tuple[asyncio.StreamWriter, asyncio.Task[None]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        reading = asyncio.create_task(self._read_frames(reader, writer, acknowledge))
        writer.write(PREFACE + frame(SETTINGS, 0, 0, b""))
        if acknowledge:
            await asyncio.wait_for(self.settings_received.wait(), 10)
        return writer, reading

    async def run(self, port: int, acknowledge: bool, limit_bytes: int) -> str:
        writer, reading = await self.connect(port, acknowledge)
        try:
            writer.write(frame(HEADERS, 0, 1, self.BLOCK))
            sent = 0
            while sent < limit_bytes and not self.answered.is_set():
                writer.write(frame(CONTINUATION, 0, 1, self.PADDING))
                sent += len(self.PADDING)
                await writer.drain()
            await asyncio.wait_for(self.answered.wait(), 10)
        except OSError:
            self.outcome = "CLOSED" if self.outcome == "PENDING" else self.outcome
        finally:
            reading.cancel()
            writer.close()
        return self.outcome

    async def _read_frames(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, acknowledge: bool) -> None:
        decoder = hpack.Decoder()
        with suppress(OSError, asyncio.IncompleteReadError):
            while True:
                length, kind, flags, stream_id = struct.unpack(">IBBI", b"\0" + await reader.readexactly(9))
                payload = await reader.readexactly(length)
                if kind == SETTINGS and not flags & ACK and not self.settings_received.is_set():
                    if acknowledge:
                        writer.write(frame(SETTINGS, ACK, 0, b""))
                    self.settings_received.set()
                elif kind == HEADERS:
                    headers = dict(decoder.decode(payload, raw=True))
                    status = STATUS_NAMES[int(headers[b"grpc-status"])] if b"grpc-status" in headers else "HEADERS"
                    self.statuses[stream_id] = status, headers.get(b"grpc-message", b"").decode()
                    if stream_id == 1:
                        self._answer(status)
                elif kind == RST_STREAM and stream_id == 1:
                    self._answer(f"RST_STREAM({struct.unpack('>I', payload)[0]})")
                elif kind == GOAWAY:
                    self._answer("GOAWAY")
        self._answer("CLOSED")

    def _answer(self, outcome: str) -> None:
        if self.outcome == "PENDING":
            self.outcome = outcome
        self.answered.set()
        self.settings_received.set()
