"""Triton's command-line flags, as Triton users' manifests spell them (`--flag=value`, booleans with a value,
repeated --load-model, any case for the mode), parsed into the same Settings as onnx-serve's own flags; and
README.md's table of them, each row of which must parse to what it says."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from onnx_serve.cli import build_parser, main, settings_from
from onnx_serve.core.settings import SETTINGS, Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def resolve(*flags: str, **environ: str) -> Settings:
    return settings_from(build_parser().parse_args(["serve", *flags]), environ)


def test_a_triton_manifest_parses_to_the_same_settings(tmp_path: Path) -> None:
    settings = resolve(f"--model-repository={tmp_path}", "--grpc-port=9001", "--http-port=9000",
                       "--metrics-port=9002", "--model-control-mode=EXPLICIT", "--load-model=simple",
                       "--load-model", "densenet_onnx", "--repository-poll-secs=5", "--strict-readiness=false",
                       "--exit-timeout-secs=7", "--log-verbose=1")
    assert settings == Settings(model_repository=tmp_path, grpc_port=9001, http_port=9000, metrics_port=9002,
                                model_control_mode="explicit", load_model=("simple", "densenet_onnx"),
                                repository_poll_s=5.0, strict_readiness=False, grace_period_s=7.0, log_verbose=1)


@pytest.mark.parametrize(("flags", "expected"), [
    ((), True), (("--strict-readiness",), True), (("--strict-readiness=true",), True),
    (("--strict-readiness", "0"), False), (("--strict-readiness=off",), False), (("--no-strict-readiness",), False),
])
def test_switches_take_triton_values(flags: tuple[str, ...], expected: bool) -> None:
    assert resolve(*flags).strict_readiness is expected


def test_exit_timeout_secs_is_the_grace_period() -> None:
    assert resolve("--exit-timeout-secs", "12").grace_period_s == 12.0
    assert resolve("--grace-period", "3").grace_period_s == 3.0


def test_variables_of_the_triton_settings() -> None:
    settings = resolve(ONNX_SERVE_MODEL_CONTROL_MODE="Poll", ONNX_SERVE_LOAD_MODEL="a, b",
                       ONNX_SERVE_REPOSITORY_POLL_SECS="2.5", ONNX_SERVE_STRICT_READINESS="false",
                       ONNX_SERVE_LOG_VERBOSE="2")
    assert (settings.model_control_mode, settings.load_model, settings.repository_poll_s) == ("poll", ("a", "b"), 2.5)
    assert not settings.strict_readiness and settings.log_verbose == 2
    assert resolve(ONNX_SERVE_MODEL_CONTROL_MODE="").model_control_mode is None  # empty: not given
    assert resolve("--load-model", "c", ONNX_SERVE_LOAD_MODEL="a,b").load_model == ("c",)  # a flag wins


@pytest.mark.parametrize(("argv", "message"), [
    (["--model-control-mode", "sometimes"], "argument --model-control-mode: invalid choice 'sometimes'"),
    (["--load-model", "*", "--load-model", "a"], "'*' (every model) must be the only --load-model"),
    (["--repository-poll-secs", "-1"], "--repository-poll-secs: expected a number of seconds >= 0"),
    (["--log-verbose", "-1"], "--log-verbose: expected a level >= 0"),
    (["--strict-readiness=maybe"], "invalid boolean value 'maybe'"),
    (["--no-strict-readiness=true"], "argument --no-strict-readiness: takes no value"),
])
def test_bad_triton_flags_are_one_line_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model-repository", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_startup_model_stops_the_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "simple" / "1").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", f"--model-repository={tmp_path}", "--model-control-mode=explicit", "--load-model=ghost"])
    assert exit_info.value.code == 2
    assert "--load-model: 'ghost' not in the model repository" in capsys.readouterr().err


def test_help_names_the_aliases(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    assert "--grace-period SECONDS, --exit-timeout-secs SECONDS" in text
    assert [spec.options for spec in SETTINGS if spec.aliases] == [("--grace-period", "--exit-timeout-secs")]


def triton_flag_rows() -> list[tuple[str, str]]:
    """(Triton's flag as written, the onnx-serve flag of the same setting) from README.md's Triton flag table."""
    text = README.read_text()
    start = text.index("| Triton flag | onnx-serve | meaning |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        flag, setting = (re.findall(r"`([^`]+)`", cell) for cell in line.split(" | ")[:2])
        rows.append((flag[0], setting[0]))
    return rows


def test_every_row_of_the_readme_triton_flag_table_parses_to_its_setting() -> None:
    rows = triton_flag_rows()
    assert {flag.split("=")[0] for flag, _ in rows} >= {
        "--model-repository", "--grpc-port", "--http-port", "--metrics-port", "--model-control-mode",
        "--repository-poll-secs", "--load-model", "--strict-readiness", "--exit-timeout-secs", "--log-verbose"}
    by_option = {spec.option: spec.name for spec in SETTINGS}
    for flag, ours in rows:
        assert ours in by_option, ours
        setting = by_option[ours]
        parsed = resolve(*shlex.split(flag))
        assert getattr(parsed, setting) != getattr(Settings(), setting), (flag, setting)
