"""The HTTP edge under the gRPC edge's security settings: TLS from the same files (plaintext refused), mutual TLS,
and bearer tokens on every route but server health, which probes call without one."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.inprocess import CPU_ONLY, InProcessServer, in_process_server
from tests.helpers.pki import write_pki
from tests.helpers.serving import add_model

TOKEN = "http-s3cret-token"
INFER_BODY = json.dumps({"inputs": [{"name": n, "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
                                    for n in "ab"]})


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    add_model(root / "add" / "1" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def tls_server(repository: Path, pki: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[InProcessServer]:
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text(f"# accepted tokens\n{TOKEN}\n")
    with in_process_server(repository, execution_providers=CPU_ONLY, metrics_port=-1, tls_cert=pki["server-cert"],
                           tls_key=pki["server-key"], auth_token_file=tokens) as running:
        yield running


def https(port: int, pki: dict[str, Path], client_cert: bool = False) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if client_cert:
        context.load_cert_chain(pki["client-cert"], pki["client-key"])
    return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)


def ask(connection: http.client.HTTPConnection, method: str, path: str, body: str | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection.request(method, path, body, headers or {})
    response = connection.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def test_the_url_says_https(tls_server: InProcessServer) -> None:
    assert tls_server.http_url.startswith("https://127.0.0.1:")


def test_plaintext_is_refused_on_the_tls_port(tls_server: InProcessServer) -> None:
    with socket.create_connection(("127.0.0.1", tls_server.http_port), timeout=5) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = sock.recv(1024)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"HTTP/1.1 200")


def test_health_is_open_and_the_rest_needs_the_token(tls_server: InProcessServer, pki: dict[str, Path]) -> None:
    connection = https(tls_server.http_port, pki)
    try:
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert ask(connection, "GET", path)[0] == 200
        status, headers, body = ask(connection, "GET", "/v2/models/add")
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert json.loads(body) == {"error": "missing or invalid bearer token"}
        assert ask(connection, "POST", "/v2/models/add/infer", INFER_BODY,
                   {"Authorization": "Bearer wrong-token"})[0] == 401
        assert ask(connection, "GET", "/v2/models/add/ready", headers={"Authorization": TOKEN})[0] == 401  # no scheme
        status, _, body = ask(connection, "POST", "/v2/models/add/infer", INFER_BODY,
                              {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and json.loads(body)["outputs"][0]["data"] == [2, 4, 6, 8]
        assert ask(connection, "GET", "/v2", headers={"Authorization": f"bearer {TOKEN}"})[0] == 200
    finally:
        connection.close()


def test_mutual_tls_needs_a_client_certificate(repository: Path, pki: dict[str, Path]) -> None:
    with in_process_server(repository, execution_providers=CPU_ONLY, metrics_port=-1, tls_cert=pki["server-cert"],
                           tls_key=pki["server-key"], tls_client_ca=pki["ca"]) as running:
        with_cert = https(running.http_port, pki, client_cert=True)
        try:
            assert ask(with_cert, "GET", "/v2/health/ready")[0] == 200
        finally:
            with_cert.close()
        without = https(running.http_port, pki)
        try:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                ask(without, "GET", "/v2/health/ready")
        finally:
            without.close()
