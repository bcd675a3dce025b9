"""Optional bearer-token authentication for every RPC except health Check and reflection.

Open without a token: grpc.health.v1.Health/Check (Kubernetes gRPC probes and grpc_health_probe call it) and
reflection. Health/Watch needs the token: it holds a stream open for as long as the caller likes, which an
anonymous caller must not get; a probe never needs it."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from onnx_serve.core.settings import SettingError
from onnx_serve.edges.shared import read_tokens

OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check"})  # exact names: a new Health method needs the token
OPEN_PREFIXES = ("/grpc.reflection.",)


def open_without_token(method: str) -> bool:
    return method in OPEN_METHODS or method.startswith(OPEN_PREFIXES)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: list[bytes]) -> None:
        if not tokens:
            raise SettingError("--auth-token-file: holds no token")
        self._tokens = tokens

    @classmethod
    def from_file(cls, path: Path) -> TokenAuthInterceptor:
        """See read_tokens: raises SettingError for a file that cannot be read or holds no token."""
        return cls(read_tokens(path))

    def _authorized(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                text = value.decode() if isinstance(value, bytes) else value
                scheme, _, token = text.partition(" ")
                if scheme.lower() != "bearer":
                    return False
                given = token.strip().encode()
                # compare_digest against every token, without stopping early, so timing tells nothing
                return any([hmac.compare_digest(given, t) for t in self._tokens])
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        if open_without_token(details.method) or self._authorized(details.invocation_metadata):
            return await continuation(details)
        return _deny(await continuation(details))


def _deny(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
    if handler is None:
        return None

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

    async def streaming(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        yield  # pragma: no cover  (makes this an async generator, as a streaming handler must be)

    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **kwargs)
    return grpc.stream_stream_rpc_method_handler(streaming, **kwargs)
