"""TLS, mutual TLS and bearer tokens against a real server, with tritonclient and plain grpc clients.
Certificates are made in the test with `cryptography`."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx_serve import Server, Settings
from onnx_serve.bench.launch import serve_command
from onnx_serve.core.settings import SettingError
from onnx_serve.edges.grpc import auth
from onnx_serve.protos.inference import grpc_service_pb2 as pb
from onnx_serve.protos.inference import grpc_service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from tests.helpers.inprocess import InProcessServer, in_process_server
from tests.helpers.serving import ServerProcess, add_model, running_server

TOKEN = "s3cret-token-for-tests"


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_client_cert: Path
    other_client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey,
           *, ca: bool = False, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, other_ca_key = _key(), _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    other_ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other ca")])
    ca = _issue("test ca", ca_key, ca_name, ca_key, ca=True)
    server_key, client_key, other_key = _key(), _key(), _key()
    return Pki(
        ca=_write_cert(ca, d / "ca.pem"),
        server_cert=_write_cert(_issue("localhost", server_key, ca_name, ca_key, server=True), d / "server.pem"),
        server_key=_write_key(server_key, d / "server.key"),
        client_cert=_write_cert(_issue("client", client_key, ca_name, ca_key), d / "client.pem"),
        client_key=_write_key(client_key, d / "client.key"),
        other_client_cert=_write_cert(_issue("intruder", other_key, other_ca_name, other_ca_key), d / "other.pem"),
        other_client_key=_write_key(other_key, d / "other.key"),
    )


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("security-repo")
    add_model(root / "add" / "1" / "model.onnx")
    return root


def triton_infer(client: tc.InferenceServerClient, **kwargs: object) -> np.ndarray:
    a = tc.InferInput("a", [1, 4], "FP32")
    a.set_data_from_numpy(np.ones((1, 4), np.float32))
    b = tc.InferInput("b", [1, 4], "FP32")
    b.set_data_from_numpy(np.ones((1, 4), np.float32))
    return client.infer("add", [a, b], **kwargs).as_numpy("sum")  # type: ignore[arg-type]


def live(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> bool:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    return stub.ServerLive(pb.ServerLiveRequest(), metadata=metadata, timeout=5).live


@pytest.fixture(scope="module")
def tls_server(repository: Path, pki: Pki) -> Iterator[InProcessServer]:
    with in_process_server(repository, tls_cert=pki.server_cert, tls_key=pki.server_key) as server:
        yield server


def test_tls_serves_tritonclient_and_grpc(tls_server: InProcessServer, pki: Pki) -> None:
    url = f"localhost:{tls_server.grpc_port}"
    with tc.InferenceServerClient(url, ssl=True, root_certificates=str(pki.ca)) as client:
        assert client.is_server_ready()
        assert triton_infer(client).tolist() == [[2.0] * 4]
    credentials = grpc.ssl_channel_credentials(pki.ca.read_bytes())
    with grpc.secure_channel(url, credentials) as channel:
        assert live(channel)


def test_tls_refuses_plaintext(tls_server: InProcessServer) -> None:
    with grpc.insecure_channel(tls_server.url) as channel, pytest.raises(grpc.RpcError) as error:
        live(channel)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_refuses_a_client_that_does_not_trust_the_server(tls_server: InProcessServer, pki: Pki) -> None:
    untrusted = grpc.ssl_channel_credentials(pki.other_client_cert.read_bytes())
    with grpc.secure_channel(f"localhost:{tls_server.grpc_port}", untrusted) as channel, \
            pytest.raises(grpc.RpcError) as error:
        live(channel)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_from_the_ca(repository: Path, pki: Pki) -> None:
    with in_process_server(repository, tls_cert=pki.server_cert, tls_key=pki.server_key,
                           tls_client_ca=pki.ca) as server:
        url = f"localhost:{server.grpc_port}"
        with tc.InferenceServerClient(url, ssl=True, root_certificates=str(pki.ca), private_key=str(pki.client_key),
                                      certificate_chain=str(pki.client_cert)) as client:
            assert triton_infer(client).tolist() == [[2.0] * 4]
        for cert, key in ((None, None), (pki.other_client_cert, pki.other_client_key)):
            credentials = grpc.ssl_channel_credentials(
                pki.ca.read_bytes(), key.read_bytes() if key else None, cert.read_bytes() if cert else None)
            with grpc.secure_channel(url, credentials) as channel, pytest.raises(grpc.RpcError) as error:
                live(channel)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def token_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    tokens.write_text(f"# accepted bearer tokens\nanother-token\n{TOKEN}\n")
    with running_server(repository, "--auth-token-file", str(tokens)) as server:
        yield server


def test_token_is_required_for_inference(token_server: ServerProcess) -> None:
    with tc.InferenceServerClient(token_server.url) as client:
        for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            with pytest.raises(InferenceServerException) as error:
                triton_infer(client, headers=headers)
            assert error.value.status() == "StatusCode.UNAUTHENTICATED"
        assert triton_infer(client, headers={"authorization": f"Bearer {TOKEN}"}).tolist() == [[2.0] * 4]
        assert triton_infer(client, headers={"authorization": "Bearer another-token"}).tolist() == [[2.0] * 4]


def test_token_guards_streams_too(token_server: ServerProcess) -> None:
    with grpc.insecure_channel(token_server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            list(stub.ModelStreamInfer(iter([pb.ModelInferRequest(model_name="add")]), timeout=5))
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_and_reflection_need_no_token(token_server: ServerProcess) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(token_server.url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for s in next(answers).list_services_response.service}
        assert "inference.GRPCInferenceService" in names and "grpc.health.v1.Health" in names


def test_the_token_never_reaches_the_logs(token_server: ServerProcess) -> None:
    with tc.InferenceServerClient(token_server.url) as client:
        triton_infer(client, headers={"authorization": f"Bearer {TOKEN}"})
        with pytest.raises(InferenceServerException):
            triton_infer(client, headers={"authorization": "Bearer not-the-token"})
    assert TOKEN not in token_server.log() and "not-the-token" not in token_server.log()


def test_reflection_describes_our_services(repository: Path) -> None:
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with in_process_server(repository) as server, grpc.insecure_channel(server.url) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService")
        answer = next(reflection.ServerReflectionInfo(iter([request])))
        files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                 for raw in answer.file_descriptor_response.file_descriptor_proto]
        services = {s.name for f in files for s in f.service}
        assert "GRPCInferenceService" in services
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="onnxserve.v1.ImageClassifier")
        answer = next(reflection.ServerReflectionInfo(iter([request])))
        assert answer.file_descriptor_response.file_descriptor_proto


# ---- security settings that cannot be honoured stop the server (fail closed) ----

def test_token_file_lines_are_stripped_and_comments_skipped(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text("# accepted tokens\n  # an indented note\n\n   \n  token-a  \n\t#tabbed note\ntoken-b\r\n")
    assert auth.read_tokens(path) == [b"token-a", b"token-b"]
    assert auth.TokenAuthInterceptor.from_file(path)._authorized((("authorization", "Bearer token-a"),))
    assert not auth.TokenAuthInterceptor.from_file(path)._authorized((("authorization", "Bearer # an indented note"),))


@pytest.mark.parametrize("content", ["", "\n\n", "# only a comment\n   # and an indented one\n"])
def test_a_token_file_without_a_token_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text(content)
    with pytest.raises(SettingError, match=r"--auth-token-file .*tokens\.txt.*no token"):
        auth.read_tokens(path)


@pytest.mark.parametrize("kind", ["missing", "directory", "not text"])
def test_an_unreadable_token_file_is_refused_naming_it(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "tokens.txt"
    if kind == "directory":
        path.mkdir()
    elif kind == "not text":
        path.write_bytes(b"\xff\xfe\x00token\n")
    with pytest.raises(SettingError, match=r"--auth-token-file .*tokens\.txt") as error:
        auth.read_tokens(path)
    assert "\n" not in str(error.value)


def test_only_health_check_is_open_without_a_token() -> None:
    assert auth.open_without_token("/grpc.health.v1.Health/Check")
    assert not auth.open_without_token("/grpc.health.v1.Health/Watch")
    assert not auth.open_without_token("/grpc.health.v1.Health/List")
    assert auth.open_without_token("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert not auth.open_without_token("/inference.GRPCInferenceService/ModelInfer")


def test_health_watch_needs_the_token_and_check_does_not(token_server: ServerProcess) -> None:
    with grpc.insecure_channel(token_server.url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        assert health.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as error:
            next(health.Watch(request, timeout=5))
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        watch = health.Watch(request, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=5)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


@pytest.fixture(scope="module")
def bad_files(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad-files")
    (d / "garbage.pem").write_text("this is not PEM\n")
    (d / "comments-only.txt").write_text("# nothing but\n   # comments\n\n")
    (d / "a-directory").mkdir()
    return {"missing": d / "missing.pem", "garbage": d / "garbage.pem", "no-tokens": d / "comments-only.txt",
            "directory": d / "a-directory", "ca": pki.ca, "cert": pki.server_cert, "key": pki.server_key,
            "other-key": pki.other_client_key}


# (flags, with {names} of bad_files, and what the one error line must say)
MISCONFIGURATIONS = {
    "client CA without TLS": (["--tls-client-ca", "{ca}"], ["--tls-client-ca", "--tls-cert", "--tls-key"]),
    "cert without key": (["--tls-cert", "{cert}"], ["--tls-cert", "--tls-key"]),
    "key without cert": (["--tls-key", "{key}"], ["--tls-cert", "--tls-key"]),
    "missing cert": (["--tls-cert", "{missing}", "--tls-key", "{key}"], ["--tls-cert", "missing.pem"]),
    "missing key": (["--tls-cert", "{cert}", "--tls-key", "{missing}"], ["--tls-key", "missing.pem"]),
    "missing client CA": (["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{missing}"],
                          ["--tls-client-ca", "missing.pem"]),
    "cert is a directory": (["--tls-cert", "{directory}", "--tls-key", "{key}"], ["--tls-cert", "a-directory"]),
    "cert not PEM": (["--tls-cert", "{garbage}", "--tls-key", "{key}"], ["--tls-cert", "garbage.pem", "PEM"]),
    "key not PEM": (["--tls-cert", "{cert}", "--tls-key", "{garbage}"], ["--tls-key", "garbage.pem"]),
    "key of another cert": (["--tls-cert", "{cert}", "--tls-key", "{other-key}"], ["--tls-key", "other.key"]),
    "client CA not PEM": (["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{garbage}"],
                          ["--tls-client-ca", "garbage.pem", "PEM"]),
    "missing token file": (["--auth-token-file", "{missing}"], ["--auth-token-file", "missing.pem"]),
    "token file is a directory": (["--auth-token-file", "{directory}"], ["--auth-token-file", "a-directory"]),
    "token file without a token": (["--auth-token-file", "{no-tokens}"],
                                   ["--auth-token-file", "comments-only.txt", "no token"]),
    "workers too": (["--workers", "2", "--auth-token-file", "{missing}"], ["--auth-token-file", "missing.pem"]),
}


@pytest.mark.parametrize("case", MISCONFIGURATIONS)
def test_a_security_setting_that_cannot_be_honoured_stops_the_server(
        case: str, repository: Path, bad_files: dict[str, Path]) -> None:
    flags, expected = MISCONFIGURATIONS[case]
    command = serve_command(repository, *(flag.format_map({k: str(v) for k, v in bad_files.items()})
                                          for flag in flags))
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    assert done.returncode == 2, output
    assert len(lines) == 1, output  # one line, no traceback, nothing logged as listening
    for word in expected:
        assert word in lines[0], output


def test_server_serve_returns_2_for_a_security_setting_it_cannot_honour(repository: Path, pki: Pki) -> None:
    settings = Settings(host="127.0.0.1", grpc_port=0, metrics_port=-1, tls_client_ca=pki.ca)
    # (before any port is bound; a regression would serve plaintext and wait for a signal: the timeout fails it)
    assert asyncio.run(asyncio.wait_for(Server(repository, settings).serve(), timeout=30)) == 2
