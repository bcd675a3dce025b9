"""Server settings: the one definition of every `onnx-serve serve` setting (flag, ONNX_SERVE_* variable, default,
help, parsing) that the CLI and the README table are generated from, and the CPU budget threads are sized to."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

ENV_PREFIX = "ONNX_SERVE_"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}
AUTO_PROVIDERS = "auto"  # the execution_providers default: what this installation has, best first


def provider_name(name: str) -> str:
    """Accepts short names (cuda, cpu) and ONNX Runtime's full names."""
    return PROVIDER_ALIASES.get(name.strip().lower(), name.strip())


class SettingError(ValueError):
    """Text for a setting (from a flag or a variable) that does not parse. The message is one line that names
    the value, so that the CLI can show it as is."""


# ---- text -> value, once per field type; a variable and a flag go through the same function ----

def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    # Rejected rather than read as false: a typo must not silently turn a feature off.
    raise SettingError(f"invalid boolean value {text!r} (use one of {', '.join(TRUE_WORDS + FALSE_WORDS)})")


def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SettingError(f"invalid integer value {text!r}") from None


def parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SettingError(f"invalid number value {text!r}") from None


def parse_str(text: str) -> str:
    return text.strip()


def parse_optional_str(text: str) -> str | None:
    """An empty value means unset: a variable cannot be set to None otherwise."""
    return text.strip() or None


def parse_path(text: str) -> Path:
    if not text.strip():
        raise SettingError("empty path")
    return Path(text.strip())


def parse_optional_path(text: str) -> Path | None:
    return Path(text.strip()) if text.strip() else None


def provider_list(names: Sequence[str]) -> tuple[str, ...]:
    """Execution providers, short or full names, best first; `auto` alone (or nothing) is the empty tuple, which
    means the best providers this onnxruntime has (onnx_serve.core.runtime.AUTO_PREFERENCE)."""
    listed = [name.strip() for name in names if name.strip()]
    if [name.lower() for name in listed] == [AUTO_PROVIDERS]:
        return ()
    if any(name.lower() == AUTO_PROVIDERS for name in listed):
        raise SettingError(f"'{AUTO_PROVIDERS}' stands alone: it cannot be listed with other execution providers "
                           f"({', '.join(listed)})")
    return tuple(provider_name(name) for name in listed)


def parse_provider_names(text: str) -> tuple[str, ...]:
    """A comma-separated list of execution providers (see provider_list)."""
    return provider_list(text.split(","))


def parse_model_names(text: str) -> tuple[str, ...]:
    """A comma-separated list of model names (a variable; the flag is given once per model)."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def parse_control_mode(text: str) -> str | None:
    """Triton spells the mode in any case (--model-control-mode=EXPLICIT); empty means not given."""
    return text.strip().lower() or None


PARSERS: dict[object, Callable[[str], Any]] = {
    bool: parse_bool,
    int: parse_int,
    float: parse_float,
    str: parse_str,
    str | None: parse_optional_str,
    Path: parse_path,
    Path | None: parse_optional_path,
}


# ---- how a Settings field describes itself ----

@dataclass(frozen=True, slots=True)
class SettingDoc:
    """What a Settings field's metadata carries; SETTINGS completes it with the field's name, type and default."""

    help: str
    flag: str | None = None  # None: the field name with dashes
    unit: str | None = None  # "seconds", "bytes": the flag's metavar and the default's unit
    choices: tuple[str, ...] = ()
    shown_default: str | None = None  # for defaults whose value reads badly (None meaning "same as --host")
    parse: Callable[[str], Any] | None = None  # None: PARSERS of the field's type
    aliases: tuple[str, ...] = ()  # more flags with the same meaning (Triton's names), without the dashes
    repeatable: bool = False  # a tuple field: the flag is given once per item (its variable: comma-separated)


_DOC_KEY = "onnx_serve.setting"


def setting_doc(help: str, *, flag: str | None = None, unit: str | None = None, choices: tuple[str, ...] = (),
                shown_default: str | None = None, parse: Callable[[str], Any] | None = None,
                aliases: tuple[str, ...] = (), repeatable: bool = False) -> dict[str, SettingDoc]:
    """The `metadata` of a Settings field (see SettingDoc)."""
    return {_DOC_KEY: SettingDoc(help, flag, unit, choices, shown_default, parse, aliases, repeatable)}


@dataclass(frozen=True, slots=True)
class Settings:
    """Every server setting. Each field's metadata documents it; SETTINGS, the CLI and the README table are derived
    from here, so a new setting is one new field."""

    model_repository: Path = field(default=Path("models"), metadata=setting_doc("model repository directory"))
    model_name: str = field(default="", metadata=setting_doc(
        "name of the one model in a repository laid out as a single model's directory (<repository>/1/model.onnx, "
        "its config beside 1/: how KServe's storage initializer fills /mnt/models); a repository of model "
        "directories serves each under its directory's name, as without it", shown_default="none"))
    # Triton's model control (see README.md, Coming from Triton); core/repository.py applies it.
    model_control_mode: str | None = field(default=None, metadata=setting_doc(
        "Triton's model control: none loads every model at start and refuses load/unload requests; explicit "
        "loads the --load-model models at start, then only what load/unload requests ask; poll loads every model "
        "at start, then what changes on disk every --repository-poll-secs (a failed reload keeps what serves). "
        "Not given: every model at start, and load/unload requests allowed", choices=("none", "poll", "explicit"),
        shown_default="all at start, load/unload allowed", parse=parse_control_mode))
    load_model: tuple[str, ...] = field(default=(), metadata=setting_doc(
        "with --model-control-mode explicit, a model to load at start; repeat it for more, or give * (alone) for "
        "all of them; ignored in the other modes, as Triton does", shown_default="none", parse=parse_model_names,
        repeatable=True))
    repository_poll_s: float = field(default=15.0, metadata=setting_doc(
        "with --model-control-mode poll, time between two looks at the model repository; 0 = never after start",
        flag="repository-poll-secs", unit="seconds"))
    strict_readiness: bool = field(default=True, metadata=setting_doc(
        "server readiness (health, ServerReady, /v2/health/ready) needs every loaded model READY; off: ready once "
        "started, whatever the models (Triton's --strict-readiness=false)"))
    server_name: str = field(default="onnx-serve", metadata=setting_doc(
        "the name ServerMetadata answers (KServe V2 `name`); a client written for Triton that checks it (Triton's "
        "health-metadata examples check for 'triton') runs unchanged with --server-name triton"))
    host: str = field(default="0.0.0.0", metadata=setting_doc(
        "address the gRPC server (and, unless --http-host, the HTTP server) binds to"))
    grpc_port: int = field(default=8001, metadata=setting_doc("gRPC port; 0 picks a free port (logged)"))
    http_port: int = field(default=8000, metadata=setting_doc(
        "HTTP/REST port (KServe V2 REST with Triton's extensions, Classify); 0 picks a free port (logged), -1 "
        "disables it"))
    http_host: str | None = field(default=None, metadata=setting_doc(
        "address the HTTP server binds to", shown_default="--host"))
    http_read_timeout_s: float = field(default=30.0, metadata=setting_doc(
        "time an HTTP client gets to send a request's headers, and between two parts of its body (408 after)",
        flag="http-read-timeout", unit="seconds"))
    metrics_port: int = field(default=8002, metadata=setting_doc(
        "Prometheus /metrics port; 0 picks a free port (logged), -1 disables it"))
    metrics_host: str | None = field(default=None, metadata=setting_doc(
        "address the metrics server binds to", shown_default="--host"))
    log_level: str = field(default="info", metadata=setting_doc(
        "log verbosity", choices=("debug", "info", "warning", "error")))
    log_verbose: int = field(default=0, metadata=setting_doc(
        "Triton's verbose logging: 1 or more logs at debug level, whatever --log-level says; 0 = off"))
    log_format: str = field(default="text", metadata=setting_doc(
        "log line format; json writes one object per line", choices=("text", "json")))
    access_log: bool = field(default=False, metadata=setting_doc("log one line per request at INFO"))
    grace_period_s: float = field(default=30.0, metadata=setting_doc(
        "time in-flight requests get to finish after SIGTERM or SIGINT, once the drain delay is over; the process "
        "exits within drain delay + grace period + 1 s whatever clients do", flag="grace-period", unit="seconds",
        aliases=("exit-timeout-secs",)))
    drain_delay_s: float = field(default=5.0, metadata=setting_doc(
        "after SIGTERM or SIGINT, time health reports NOT_SERVING while requests are still served, so that load "
        "balancers (Kubernetes endpoints) stop sending before new requests are refused", flag="drain-delay",
        unit="seconds"))
    workers: int = field(default=1, metadata=setting_doc(
        "server processes sharing the port (SO_REUSEPORT), each with its own sessions"))
    # () is `auto`: resolved once per process by onnx_serve.core.runtime.auto_providers, which logs the choice.
    execution_providers: tuple[str, ...] = field(default=(), metadata=setting_doc(
        "ONNX Runtime execution providers in order of preference, comma-separated, for models whose config "
        "names none: auto (CUDA then CPU, of those this onnxruntime has; logged once at start) or a list of cuda, "
        "cpu, tensorrt, rocm, openvino, dnnl, coreml or full ONNX Runtime names. A provider listed here that "
        "cannot be had is logged as a fallback at each model load", shown_default=AUTO_PROVIDERS,
        parse=parse_provider_names))
    strict_providers: bool = field(default=False, metadata=setting_doc(
        "fail a model's load instead of falling back to CPU when an execution provider it was to run on (listed, "
        "or chosen by auto) is unavailable"))
    intra_op_threads: int = field(default=0, metadata=setting_doc(
        "ONNX Runtime intra-op threads per model instance; 0 sizes them to the CPU quota (cgroup limit) divided "
        "among workers and instances"))
    inter_op_threads: int = field(default=0, metadata=setting_doc("ONNX Runtime inter-op threads; 0 = 1"))
    # What a gRPC client can make the server hold (arithmetic in edges/grpc/transport.py): messages in flight
    # <= max_concurrent_rpcs x max_message_bytes = 128 x 2 MiB; header blocks before a connection acknowledges
    # our HTTP/2 settings <= max_grpc_connections x 16 MiB = 16 x 16 MiB; each for at most grpc_read_timeout_s.
    max_message_bytes: int = field(default=2 * 1024 * 1024, metadata=setting_doc(
        "largest gRPC message accepted or sent, checked after decompression (a batch of 64 MNIST digits is "
        "0.2 MiB, a photo 1 MiB or so); in flight: up to --max-concurrent-rpcs of them", unit="bytes"))
    max_concurrent_rpcs: int = field(default=128, metadata=setting_doc(
        "gRPC calls in progress at once, server-wide (a stream counts for as long as it is open); beyond it a "
        "call is refused at once with RESOURCE_EXHAUSTED; with --max-message-bytes it bounds the bytes of messages "
        "in flight (128 x 2 MiB = 256 MiB); 0 = no limit"))
    max_grpc_connections: int = field(default=16, metadata=setting_doc(
        "gRPC client connections at once; one beyond it is closed at once (the client sees UNAVAILABLE and "
        "retries); until a connection acknowledges the server's HTTP/2 settings gRPC accepts 16 MiB of headers "
        "from it, so this bounds that to 16 x 16 MiB = 256 MiB; 0 = no limit"))
    grpc_read_timeout_s: float = field(default=10.0, metadata=setting_doc(
        "time a gRPC client gets to send a unary request's message after its headers (DEADLINE_EXCEEDED after), "
        "and a new connection to acknowledge the server's HTTP/2 settings (closed after); 0 = no limit",
        flag="grpc-read-timeout", unit="seconds"))
    max_connection_idle_s: float = field(default=300.0, metadata=setting_doc(
        "close gRPC connections that have had no call for this long, giving their --max-grpc-connections slot "
        "back; 0 = never", flag="max-connection-idle", unit="seconds"))
    keepalive_time_s: float = field(default=60.0, metadata=setting_doc(
        "ping gRPC clients that have calls in flight this often; one that does not answer within 20 s is "
        "disconnected, freeing what its calls held; 0 = the gRPC default (2 hours)", flag="keepalive-time",
        unit="seconds"))
    max_decoding_bytes: int = field(default=256 * 1024 * 1024, metadata=setting_doc(
        "memory all of a worker's Classify image decodes in flight may hold together (decoded pixels and their "
        "reduced copies; each image is also bounded by its model's limits.max_decoded_bytes); an image that cannot "
        "get its bytes within 1 s is answered RESOURCE_EXHAUSTED; 0 = no limit", unit="bytes"))
    max_connection_age_s: float = field(default=0.0, metadata=setting_doc(
        "close client connections after this long (clients reconnect, which rebalances load after a scale-out); "
        "0 = never", flag="max-connection-age", unit="seconds"))
    max_connection_age_grace_s: float = field(default=0.0, metadata=setting_doc(
        "time a connection closed for age gets to finish its RPCs", flag="max-connection-age-grace", unit="seconds"))
    max_concurrent_streams: int = field(default=0, metadata=setting_doc(
        "HTTP/2 streams per connection; 0 = the gRPC default"))
    tls_cert: Path | None = field(default=None, metadata=setting_doc(
        "PEM certificate chain: turns TLS on (plaintext is then refused)"))
    tls_key: Path | None = field(default=None, metadata=setting_doc("PEM private key of --tls-cert"))
    tls_client_ca: Path | None = field(default=None, metadata=setting_doc(
        "PEM CA bundle: require and verify client certificates (mutual TLS)"))
    auth_token_file: Path | None = field(default=None, metadata=setting_doc(
        "file of accepted bearer tokens, one per line: every RPC but health Check and reflection then needs "
        "'authorization: Bearer <token>'"))
    tracing: bool = field(default=False, metadata=setting_doc(
        "OpenTelemetry spans per request (queue, preprocess, inference), exported as the OTEL_* variables say; "
        "needs the tracing extra (.venv/bin/pip install \".[tracing]\"); on Kubernetes, add "
        "deploy/k8s/components/tracing-egress, since the NetworkPolicy allows no egress"))

    @property
    def metrics_bind_host(self) -> str:
        return self.metrics_host or self.host

    @property
    def http_bind_host(self) -> str:
        return self.http_host or self.host

    def __post_init__(self) -> None:
        # Triton's rules for its flags, checked wherever Settings come from (flags, variables, Python).
        if "*" in self.load_model and len(self.load_model) > 1:
            raise SettingError("--load-model: '*' (every model) must be the only --load-model, as Triton requires")
        if self.repository_poll_s < 0:
            raise SettingError(f"--repository-poll-secs: expected a number of seconds >= 0, got "
                               f"{self.repository_poll_s:g}")
        if self.log_verbose < 0:
            raise SettingError(f"--log-verbose: expected a level >= 0, got {self.log_verbose}")


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """One Settings field as the CLI and the docs see it."""

    name: str  # the Settings field, also the argparse dest
    value_type: object
    default: object
    flag: str  # without the leading dashes
    help: str
    unit: str | None
    choices: tuple[str, ...]
    shown_default: str | None
    parser: Callable[[str], Any]
    aliases: tuple[str, ...] = ()  # more flags, without the leading dashes
    repeatable: bool = False

    @property
    def option(self) -> str:
        return "--" + self.flag

    @property
    def options(self) -> tuple[str, ...]:
        """The flag and its aliases."""
        return (self.option, *("--" + alias for alias in self.aliases))

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flag.upper().replace("-", "_")

    @property
    def is_switch(self) -> bool:
        return self.value_type is bool

    def parse(self, text: str) -> Any:
        value = self.parser(text)
        if self.choices and value is not None and value not in self.choices:
            raise SettingError(f"invalid choice {text!r} (choose from {', '.join(self.choices)})")
        return value

    @property
    def default_text(self) -> str:
        """The default as --help shows it, with its unit."""
        if self.shown_default is not None:
            return self.shown_default
        return _describe(self.default) + (f" {self.unit}" if self.unit else "")


def _describe(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 30, not 30.0: what one would type
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _specs() -> tuple[SettingSpec, ...]:
    hints = get_type_hints(Settings)
    specs = []
    for item in fields(Settings):
        doc = item.metadata.get(_DOC_KEY)
        if not isinstance(doc, SettingDoc):
            raise TypeError(f"Settings.{item.name} is not declared with setting()")
        value_type = hints[item.name]
        parser = doc.parse or PARSERS.get(value_type)
        if parser is None:
            raise TypeError(f"Settings.{item.name}: no parser for {value_type}; pass setting(parse=...)")
        specs.append(SettingSpec(
            name=item.name, value_type=value_type, default=item.default, flag=doc.flag or item.name.replace("_", "-"),
            help=doc.help, unit=doc.unit, choices=doc.choices, shown_default=doc.shown_default, parser=parser,
            aliases=doc.aliases, repeatable=doc.repeatable))
    return tuple(specs)


SETTINGS = _specs()


def settings_from_sources(flags: Mapping[str, object], environ: Mapping[str, str]) -> Settings:
    """Each setting from `flags` (already parsed, keyed by field name; None or absent: not given), else from its
    ONNX_SERVE_* variable, else its default. Raises SettingError naming the variable of a value that does
    not parse."""
    values: dict[str, object] = {}
    for spec in SETTINGS:
        given = flags.get(spec.name)
        text = environ.get(spec.env)
        if given is not None:
            values[spec.name] = given
        elif text is not None:
            try:
                values[spec.name] = spec.parse(text)
            except SettingError as error:
                raise SettingError(f"{spec.env}: {error}") from None
    return Settings(**values)  # type: ignore[arg-type]  # each value came from its field's own parser


def markdown_table() -> str:
    """The README's configuration table: flag, default and meaning of every setting."""
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for spec in SETTINGS:
        meaning = spec.help + (f" ({', '.join(f'`{choice}`' for choice in spec.choices)})" if spec.choices else "")
        flags = ", ".join(f"`{option}`" for option in spec.options)
        rows.append(f"| {flags} | {_markdown_default(spec)} | {meaning.replace('|', '&#124;')} |")
    return "\n".join(rows) + "\n"


def _markdown_default(spec: SettingSpec) -> str:
    if spec.shown_default is not None:
        return f"`{spec.shown_default}`"
    if spec.default is None or isinstance(spec.default, bool):
        return _describe(spec.default)  # on, off, none: words, not values to type
    return f"`{_describe(spec.default)}`" + (f" {spec.unit}" if spec.unit else "")


def cpu_quota() -> float:
    """CPUs this process may use: the cgroup CPU limit (v2, then v1) capped by the affinity mask.
    A container limited to 2 CPUs on a 64-core host must not start 64 ORT threads."""
    cpus = float(len(os.sched_getaffinity(0)))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, int(quota) / int(period))
    except (OSError, ValueError):
        try:
            quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            if quota_us > 0:
                cpus = min(cpus, quota_us / period_us)
        except (OSError, ValueError):
            pass
    return max(cpus, 1.0)


def default_intra_op_threads(workers: int, instances: int) -> int:
    return max(1, math.floor(cpu_quota() / max(1, workers * instances)))
