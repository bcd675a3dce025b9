"""Classify over HTTP: the body is one encoded image (image/jpeg, image/png, ... or anything that is not
multipart), or multipart/form-data with one image per part; `?top_k=N`. The answer is JSON, shaped as the
gRPC ClassifyResponse: per image, its top-k `{label, index, score}`."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from onnx_serve.core.dataplane import ClassifyResult, EncodedImage, ImageSource
from onnx_serve.core.errors import InvalidArgument

MAX_PARTS = 1024  # the data plane refuses more images than a model's limit; this bounds the parsing before that
MAX_BOUNDARY_CHARS = 70  # RFC 2046


def image_sources(body: bytes, content_type: str) -> list[ImageSource | None]:
    media_type, _, params = content_type.partition(";")
    if media_type.strip().lower() == "multipart/form-data":
        return [EncodedImage(part) for part in multipart_parts(body, _boundary(params))]
    if media_type.strip().lower() == "application/json":
        raise InvalidArgument("classify takes the image itself as the body (Content-Type image/jpeg, image/png, "
                              "...) or multipart/form-data, not JSON")
    return [EncodedImage(body)]


def top_k_of(query_string: bytes) -> int:
    """`?top_k=N` (0 or absent: the model's configured default)."""
    top_k = 0
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key != "top_k":
            raise InvalidArgument(f"query parameter '{key[:100]}': unknown (classify takes top_k)")
        try:
            top_k = int(value)
        except ValueError:
            raise InvalidArgument(f"top_k: expected an integer, got '{value[:100]}'") from None
        if top_k < 0:
            raise InvalidArgument(f"top_k: must be positive, got {top_k}")
    return top_k


def _boundary(params: str) -> bytes:
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            boundary = value.strip().strip('"')
            if 0 < len(boundary) <= MAX_BOUNDARY_CHARS and boundary.isascii():
                return boundary.encode("ascii")
            break
    raise InvalidArgument("Content-Type: multipart/form-data needs a boundary parameter of 1 to 70 ASCII characters")


def multipart_parts(body: bytes, boundary: bytes) -> list[memoryview]:
    """The contents of each part (views of the body: no copy), whatever their headers say."""
    view = memoryview(body)
    delimiter = b"--" + boundary
    position = body.find(delimiter)
    if position < 0:
        raise InvalidArgument("multipart body: no part (the boundary of the Content-Type never occurs)")
    position += len(delimiter)
    parts: list[memoryview] = []
    while not body.startswith(b"--", position):  # the closing delimiter ends the body
        line_end = body.find(b"\r\n", position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            raise InvalidArgument("multipart body: a boundary line is malformed")
        if body.startswith(b"\r\n", line_end + 2):  # a part with no headers
            start = line_end + 4
        else:
            headers_end = body.find(b"\r\n\r\n", line_end + 2)
            if headers_end < 0:
                raise InvalidArgument(f"multipart body: part {len(parts)} has no end to its headers")
            start = headers_end + 4
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise InvalidArgument(f"multipart body: part {len(parts)} is not closed by the boundary")
        parts.append(view[start:end])
        if len(parts) > MAX_PARTS:
            raise InvalidArgument(f"multipart body: more than {MAX_PARTS} parts")
        position = end + 2 + len(delimiter)
    if not parts:
        raise InvalidArgument("multipart body: no part")
    return parts


def classify_body(result: ClassifyResult) -> bytes:
    document: dict[str, Any] = {"model_name": result.model_name, "model_version": result.model_version}
    if result.request_id:
        document["id"] = result.request_id
    document["results"] = [
        {"predictions": [{"label": p.label, "index": int(p.index), "score": float(p.score)} for p in row]}
        for row in result.predictions
    ]
    return json.dumps(document, separators=(",", ":")).encode()
