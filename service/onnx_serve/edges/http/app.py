"""The ASGI app of the HTTP edge: KServe V2 REST routes with Triton's extensions and Classify, over the data
plane. Thin: route, authorize, read the body (bounded in size before it is read, and in time), parse, call the
data plane, encode, and map every failure to its status with the body `{"error": "<message>"}`.

Request ids: the inference request's JSON `id`, else an `X-Request-ID` header, which is echoed. Deadlines: an
`X-Request-Timeout-Ms` header (the `timeout` request parameter is Triton's queue timeout, in the data plane).
While the server drains, every answer carries `Connection: close`, so that keep-alive clients reconnect to
another replica.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from onnx_serve.core.dataplane import DataPlane
from onnx_serve.core.errors import InvalidArgument, ServeError
from onnx_serve.core.settings import Settings
from onnx_serve.edges.http import metadata
from onnx_serve.edges.http.classify import classify_body, image_sources, top_k_of
from onnx_serve.edges.http.errors import Headers, HttpError, error_body, status_of
from onnx_serve.edges.http.tensors import encode_infer_response, load_json, parse_infer_request

log = logging.getLogger("onnx_serve.edges.http")
JSON = b"application/json"
BINARY = b"application/octet-stream"
OFF_LOOP_BYTES = 1024 * 1024  # bodies larger than this are decompressed and parsed in a worker thread
MAX_REQUEST_ID_CHARS = 256
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(slots=True)
class Response:
    status: int
    body: bytes | list[bytes] = b""
    content_type: bytes | None = JSON
    headers: Headers = field(default_factory=list)
    close: bool = False


def json_response(document: object, status: int = 200) -> Response:
    return Response(status, metadata.dumps(document))


class Disconnected(Exception):
    """The client went away while its body was being read: there is no one to answer."""


class Request:
    __slots__ = ("headers", "query", "receive", "request_id", "started_ns")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.receive = receive
        self.query: bytes = scope.get("query_string", b"")
        self.headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        self.started_ns = time.monotonic_ns()
        self.request_id = ""  # the X-Request-ID header, once checked: echoed in the answer

    def check_request_id(self) -> str:
        """The X-Request-ID header ("" when none), refused when it could not be echoed as a header."""
        given = self.headers.get("x-request-id", "")
        if len(given) > MAX_REQUEST_ID_CHARS or not all(" " <= c <= "~" for c in given):
            raise HttpError(400, f"X-Request-ID: expected at most {MAX_REQUEST_ID_CHARS} printable ASCII characters")
        self.request_id = given
        return given

    def deadline_ns(self) -> int | None:
        text = self.headers.get("x-request-timeout-ms")
        if text is None:
            return None
        try:
            milliseconds = float(text)
        except ValueError:
            milliseconds = -1.0
        if not 0 <= milliseconds < 1e12:
            raise HttpError(400, "X-Request-Timeout-Ms: expected a non-negative number of milliseconds")
        return self.started_ns + int(milliseconds * 1e6) if milliseconds else None


Handler = Callable[..., Awaitable[Response]]


class HttpApp:
    def __init__(self, plane: DataPlane, settings: Settings, tokens: list[bytes] | None = None) -> None:
        self.plane = plane
        self.max_body_bytes = settings.max_message_bytes
        self.read_timeout_s = settings.http_read_timeout_s
        self.tokens = tokens
        self.routes = self._route_table()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off and no WebSocket is served
            return
        request = Request(scope, receive)
        try:
            request.check_request_id()
            handler, params, open_route = self.resolve(scope["method"], scope.get("raw_path") or b"/")
            if self.tokens is not None and not open_route:
                self.authorize(request)
            response = await handler(request, **params)
        except Disconnected:
            return
        except asyncio.CancelledError:
            # The stop's grace period is over: this task is uvicorn's top-level one for the request, so the
            # request is answered here rather than the cancellation being logged by uvicorn as a crash.
            response = Response(503, error_body("the server stopped before the request finished"), close=True)
        except HttpError as exc:
            response = Response(exc.status, error_body(exc.message), headers=exc.headers, close=exc.close)
        except ServeError as exc:
            response = Response(status_of(exc), error_body(str(exc)))
        except Exception:  # a bug: logged with its traceback and an id; the client gets the id only
            request_id = request.request_id or uuid.uuid4().hex[:16]
            log.error("http %s %s failed with an internal error (request id %s)", scope["method"],
                      scope.get("path", "")[:200], request_id, exc_info=True, extra={"request_id": request_id})
            response = Response(500, error_body(f"internal error (request id {request_id})"))
        await self.send(send, request, response)

    async def send(self, send: Send, request: Request, response: Response) -> None:
        body = response.body if isinstance(response.body, bytes) else b"".join(response.body)
        headers = [(b"content-length", b"%d" % len(body)), *response.headers]
        if response.content_type is not None:
            headers.append((b"content-type", response.content_type))
        if request.request_id:
            headers.append((b"x-request-id", request.request_id.encode()))
        if response.close or self.plane.draining:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------------------------------------- routing

    def _route_table(self) -> list[tuple[tuple[str, ...], str, Handler, bool]]:
        """(path pattern, method, handler, open without a token); the first pattern that matches wins."""
        table: list[tuple[str, str, Handler, bool]] = [
            ("v2", "GET", self.server_metadata, False),
            ("v2/health/live", "GET", self.live, True),
            ("v2/health/ready", "GET", self.ready, True),
            ("v2/models/stats", "GET", self.statistics, False),
            ("v2/repository/index", "POST", self.repository_index, False),
            ("v2/repository/models/{model}/load", "POST", self.load, False),
            ("v2/repository/models/{model}/unload", "POST", self.unload, False),
        ]
        for model in ("v2/models/{model}", "v2/models/{model}/versions/{version}"):
            table += [
                (model, "GET", self.model_metadata, False),
                (f"{model}/ready", "GET", self.model_ready, False),
                (f"{model}/config", "GET", self.model_config, False),
                (f"{model}/stats", "GET", self.statistics, False),
                (f"{model}/infer", "POST", self.infer, False),
                (f"{model}/classify", "POST", self.classify, False),
            ]
        return [(tuple(path.split("/")), method, handler, is_open) for path, method, handler, is_open in table]

    def resolve(self, method: str, raw_path: bytes) -> tuple[Handler, dict[str, str], bool]:
        segments = [unquote(part.decode("latin-1")) for part in raw_path.split(b"/")[1:]]
        allowed: list[str] = []
        for pattern, route_method, handler, is_open in self.routes:
            if len(pattern) != len(segments):
                continue
            params = {}
            for want, got in zip(pattern, segments, strict=True):
                if want.startswith("{"):
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                if method == route_method or (method == "HEAD" and route_method == "GET"):
                    return handler, params, is_open
                allowed.append(route_method)
        if allowed:
            methods = sorted({*allowed, *(["HEAD"] if "GET" in allowed else [])})
            raise HttpError(405, f"method {method[:20]} is not allowed here (allowed: {', '.join(methods)})",
                            headers=[(b"allow", ", ".join(methods).encode())])
        shown = raw_path[:200].decode("latin-1")
        raise HttpError(404, f"no such route: {shown} (the KServe V2 REST API is served under /v2)")

    def authorize(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode("latin-1")
        # compare_digest against every token, without stopping early, so that timing tells nothing
        if scheme.lower() != "bearer" or not any([hmac.compare_digest(given, t) for t in self.tokens or ()]):
            raise HttpError(401, "missing or invalid bearer token", headers=[(b"www-authenticate", b"Bearer")])

    # ---------------------------------------------------------------------------------------------- bodies

    async def read_body(self, request: Request) -> bytes:
        """The whole body, refused (413) before it is read when its declared length is over the limit, or as soon
        as what arrived is (a chunked body); 408 when the client pauses longer than the read timeout."""
        limit = self.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and int(declared) > limit:  # the parser has checked that it is a number
            raise HttpError(413, f"the request body is {declared} bytes, above the limit of {limit} "
                                 "(--max-message-bytes)", close=True)
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.read_timeout_s) as timeout:
                while True:
                    message = await request.receive()
                    if message["type"] == "http.disconnect":
                        raise Disconnected
                    chunk: bytes = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise HttpError(413, f"the request body is over the limit of {limit} bytes "
                                             "(--max-message-bytes)", close=True)
                    if chunk:
                        chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
                    timeout.reschedule(loop.time() + self.read_timeout_s)
        except TimeoutError:
            raise HttpError(408, f"the request body stopped arriving for {self.read_timeout_s:g}s (after {size} "
                                 "bytes)", close=True) from None
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            body = await self._off_loop(len(body), _decompressed, body, encoding, limit)
        return body

    async def _off_loop(self, size: int, function: Callable[..., Any], *args: Any) -> Any:
        """Runs `function` here for a small input, else in a worker thread, so that the loop keeps serving."""
        if size <= OFF_LOOP_BYTES:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)

    async def optional_json(self, request: Request) -> dict[str, Any]:
        body = await self.read_body(request)
        if not body.strip():
            return {}
        document = load_json(body, "request body")
        if not isinstance(document, dict):
            raise InvalidArgument("request body: expected a JSON object")
        return document

    # --------------------------------------------------------------------------------------------- routes

    async def live(self, request: Request) -> Response:
        return json_response({"live": self.plane.live()})

    async def ready(self, request: Request) -> Response:
        ready = self.plane.ready()
        return json_response({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        return json_response(metadata.server_metadata(self.plane.server_metadata()))

    async def model_metadata(self, request: Request, model: str, version: str = "") -> Response:
        return json_response(metadata.model_metadata(self.plane.model_metadata(model, version)))

    async def model_ready(self, request: Request, model: str, version: str = "") -> Response:
        ready = self.plane.model_ready(model, version)
        return json_response({"name": model, "ready": ready}, 200 if ready else 503)

    async def model_config(self, request: Request, model: str, version: str = "") -> Response:
        return json_response(metadata.model_config(self.plane.model_version(model, version)))

    async def statistics(self, request: Request, model: str = "", version: str = "") -> Response:
        return json_response(metadata.statistics(self.plane.statistics(model, version)))

    async def repository_index(self, request: Request) -> Response:
        ready = (await self.optional_json(request)).get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidArgument("ready: expected a boolean")
        return json_response(metadata.repository_index(self.plane.repository_index(ready_only=ready)))

    async def load(self, request: Request, model: str) -> Response:
        parameters = (await self.optional_json(request)).get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidArgument("parameters: expected a JSON object")
        await self.plane.load_model(model, parameters)
        return Response(200, content_type=None)

    async def unload(self, request: Request, model: str) -> Response:
        await self.optional_json(request)  # parameters (unload_dependents) change nothing: no model depends on another
        await self.plane.unload_model(model)
        return Response(200, content_type=None)

    async def infer(self, request: Request, model: str, version: str = "") -> Response:
        deadline = request.deadline_ns()
        body = await self.read_body(request)
        header_length = _header_length(request.headers.get("inference-header-content-length"))
        parsed = await self._off_loop(header_length or len(body), parse_infer_request, body, header_length)
        result = await self.plane.infer(model, version, parsed.decoder(self.plane.max_elements), parsed.outputs,
                                        deadline_ns=deadline, request_id=parsed.request_id or request.request_id,
                                        parameters=parsed.parameters, api="http_infer")
        parts, json_length = encode_infer_response(result, parsed)
        if json_length is None:
            return Response(200, parts)
        return Response(200, parts, BINARY, [(b"inference-header-content-length", b"%d" % json_length)])

    async def classify(self, request: Request, model: str, version: str = "") -> Response:
        deadline = request.deadline_ns()
        top_k = top_k_of(request.query)
        body = await self.read_body(request)
        images = image_sources(body, request.headers.get("content-type", ""))
        result = await self.plane.classify(model, version, images, top_k, deadline_ns=deadline,
                                           request_id=request.request_id, api="http_classify")
        return Response(200, classify_body(result))


def _header_length(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument("Inference-Header-Content-Length: expected an integer") from None


def _decompressed(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate body (as tritonclient sends with request compression), bounded by the body limit as it
    is inflated, so that a small bomb cannot make the server hold more than an uncompressed body could."""
    if encoding not in ("gzip", "deflate"):
        raise HttpError(415, f"Content-Encoding {encoding[:40]} is not supported (use gzip, deflate or none)")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidArgument(f"Content-Encoding {encoding}: the body does not inflate: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise HttpError(413, f"the request body inflates to more than the limit of {limit} bytes")
    if not inflater.eof:
        raise InvalidArgument(f"Content-Encoding {encoding}: the body is truncated")
    return data

