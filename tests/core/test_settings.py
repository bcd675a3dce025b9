"""Settings as the one definition of the serve flags: every field's flag, variable and help; how flags and
ONNX_SERVE_* variables parse and which wins; --help; the README's configuration table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from onnx_serve.cli import build_parser, main, settings_from
from onnx_serve.core.settings import SETTINGS, Settings, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"

# The flags as deployments and scripts spell them today: renaming one breaks them.
FLAGS = {
    "model_repository": "--model-repository", "model_name": "--model-name", "server_name": "--server-name",
    "host": "--host",
    "model_control_mode": "--model-control-mode", "load_model": "--load-model",
    "repository_poll_s": "--repository-poll-secs", "strict_readiness": "--strict-readiness",
    "log_verbose": "--log-verbose",
    "grpc_port": "--grpc-port",
    "http_port": "--http-port", "http_host": "--http-host", "http_read_timeout_s": "--http-read-timeout",
    "metrics_port": "--metrics-port", "metrics_host": "--metrics-host", "log_level": "--log-level",
    "log_format": "--log-format", "access_log": "--access-log", "grace_period_s": "--grace-period",
    "drain_delay_s": "--drain-delay",
    "workers": "--workers", "execution_providers": "--execution-providers", "strict_providers": "--strict-providers",
    "intra_op_threads": "--intra-op-threads", "inter_op_threads": "--inter-op-threads",
    "max_message_bytes": "--max-message-bytes",
    "max_decoding_bytes": "--max-decoding-bytes",
    "max_concurrent_rpcs": "--max-concurrent-rpcs", "max_grpc_connections": "--max-grpc-connections",
    "grpc_read_timeout_s": "--grpc-read-timeout", "max_connection_idle_s": "--max-connection-idle",
    "keepalive_time_s": "--keepalive-time", "max_connection_age_s": "--max-connection-age",
    "max_connection_age_grace_s": "--max-connection-age-grace", "max_concurrent_streams": "--max-concurrent-streams",
    "tls_cert": "--tls-cert", "tls_key": "--tls-key", "tls_client_ca": "--tls-client-ca",
    "auth_token_file": "--auth-token-file", "tracing": "--tracing",
}


def resolve(*flags: str, **environ: str) -> Settings:
    return settings_from(build_parser().parse_args(["serve", *flags]), environ)


def test_every_field_has_its_flag_variable_and_help() -> None:
    assert [spec.name for spec in SETTINGS] == [item.name for item in dataclasses.fields(Settings)]
    assert {spec.name: spec.option for spec in SETTINGS} == FLAGS
    for spec in SETTINGS:
        assert spec.env == "ONNX_SERVE_" + spec.option[2:].upper().replace("-", "_")
        assert spec.help.strip() and spec.default_text.strip()


def test_nothing_given_is_the_dataclass_defaults() -> None:
    assert resolve() == Settings()


def test_flags_parse_to_the_field_types(tmp_path: Path) -> None:
    settings = resolve(
        "--model-repository", str(tmp_path), "--host", "127.0.0.1", "--grpc-port", "9001", "--metrics-port", "-1",
        "--metrics-host", "::1", "--log-level", "debug", "--log-format", "json", "--access-log",
        "--grace-period", "2.5", "--workers", "3", "--execution-providers", "tensorrt, cpu", "--strict-providers",
        "--intra-op-threads", "4", "--inter-op-threads", "2", "--max-message-bytes", "1024",
        "--max-connection-age", "300", "--max-connection-age-grace", "30", "--max-concurrent-streams", "100",
        "--tls-cert", "cert.pem", "--tls-key", "key.pem", "--tls-client-ca", "ca.pem",
        "--auth-token-file", "tokens", "--tracing",
    )
    assert settings == Settings(
        model_repository=tmp_path, host="127.0.0.1", grpc_port=9001, metrics_port=-1, metrics_host="::1",
        log_level="debug", log_format="json", access_log=True, grace_period_s=2.5, workers=3,
        execution_providers=("TensorrtExecutionProvider", "CPUExecutionProvider"), strict_providers=True,
        intra_op_threads=4, inter_op_threads=2, max_message_bytes=1024, max_connection_age_s=300.0,
        max_connection_age_grace_s=30.0, max_concurrent_streams=100, tls_cert=Path("cert.pem"),
        tls_key=Path("key.pem"), tls_client_ca=Path("ca.pem"), auth_token_file=Path("tokens"), tracing=True,
    )
    assert isinstance(settings.grpc_port, int) and isinstance(settings.grace_period_s, float)


def test_variables_apply_and_a_flag_wins() -> None:
    settings = resolve("--grpc-port", "9001", "--no-tracing", ONNX_SERVE_GRPC_PORT="7001",
                       ONNX_SERVE_METRICS_PORT="7002", ONNX_SERVE_GRACE_PERIOD="5", ONNX_SERVE_TRACING="true",
                       ONNX_SERVE_EXECUTION_PROVIDERS="cpu", ONNX_SERVE_MAX_CONNECTION_AGE="300")
    assert settings.grpc_port == 9001 and settings.tracing is False  # flags
    assert settings.metrics_port == 7002 and settings.grace_period_s == 5.0  # variables
    assert settings.execution_providers == ("CPUExecutionProvider",) and settings.max_connection_age_s == 300.0


def test_a_given_flag_makes_its_variable_irrelevant() -> None:
    assert resolve("--workers", "2", ONNX_SERVE_WORKERS="many").workers == 2


@pytest.mark.parametrize(("text", "expected"), [
    ("1", True), ("true", True), ("Yes", True), (" on ", True), ("0", False), ("false", False), ("NO", False),
    ("off", False),
])
def test_switches_from_variables(text: str, expected: bool) -> None:
    settings = resolve(ONNX_SERVE_ACCESS_LOG=text, ONNX_SERVE_STRICT_PROVIDERS=text)
    assert settings.access_log is expected and settings.strict_providers is expected


def test_an_empty_variable_unsets_a_path_or_address() -> None:
    settings = resolve(ONNX_SERVE_TLS_CERT="", ONNX_SERVE_AUTH_TOKEN_FILE=" ", ONNX_SERVE_METRICS_HOST="",
                       ONNX_SERVE_MODEL_REPOSITORY="/models")
    assert settings.tls_cert is None and settings.auth_token_file is None and settings.metrics_host is None
    assert settings.model_repository == Path("/models") and settings.metrics_bind_host == settings.host


@pytest.mark.parametrize(("variable", "text", "message"), [
    ("ONNX_SERVE_GRPC_PORT", "80a", "ONNX_SERVE_GRPC_PORT: invalid integer value '80a'"),
    ("ONNX_SERVE_GRACE_PERIOD", "soon", "ONNX_SERVE_GRACE_PERIOD: invalid number value 'soon'"),
    ("ONNX_SERVE_TRACING", "maybe", "ONNX_SERVE_TRACING: invalid boolean value 'maybe'"),
    ("ONNX_SERVE_LOG_LEVEL", "loud", "ONNX_SERVE_LOG_LEVEL: invalid choice 'loud'"),
])
def test_a_bad_variable_is_a_one_line_usage_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                  variable: str, text: str, message: str) -> None:
    monkeypatch.setenv(variable, text)
    with pytest.raises(SystemExit) as exit_info:
        main(["serve"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"onnx-serve serve: error: {message}") and error.count("\n") == 1


def test_a_bad_flag_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--grpc-port", "80a"])
    assert exit_info.value.code == 2
    assert "argument --grpc-port: invalid integer value '80a'" in capsys.readouterr().err


def test_help_shows_each_default_once(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100000")  # no wrapping: argparse would break "onnx-serve" at its hyphen
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: )" not in text
    assert text.count("(default:") == len(SETTINGS)
    for spec in SETTINGS:
        assert text.count(f"(default: {spec.default_text}) [env {spec.env}]") == 1, spec.name
    assert "(default: --host)" in text and "(default: auto)" in text


def test_readme_table_matches_the_dataclass() -> None:
    lines = README.read_text().splitlines()
    start = lines.index("| flag | default | meaning |")
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    assert "\n".join(lines[start:end]) + "\n" == markdown_table(), (
        "README.md's configuration table is stale: run python scripts/gen_settings_table.py")


@pytest.mark.parametrize("command", ["bench", "tune", "quantize"])
def test_the_tools_help_shows_a_default_at_most_once_per_option(
        command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100000")  # one line per option
    with pytest.raises(SystemExit):
        main([command, "--help"])
    options = [line for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("-")]
    assert options
    for line in options:
        assert "(default: None)" not in line and "(default: )" not in line and "(default: False)" not in line, line
        assert line.lower().count("default") <= 1, line
