"""What `onnx-serve tune` varies: one serving configuration of a model (its config.yaml keys, and the server's
--workers), the values each knob may take on this machine, and how a configuration is written back into the
model's config.yaml (every other key left as it was)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any

DELAYS_US = (0, 250, 1000, 4000)
MAX_BATCH_SIZES = (8, 16, 32, 64)
PREFERRED_CHOICES = ((), (4,), (8,), (16,), (32,))


@dataclass(frozen=True, slots=True, order=True)
class TuneConfig:
    """One point of the search space."""

    workers: int = 1
    instance_count: int = 1
    intra_op_threads: int = 0  # per instance; 0 = the server's default (the CPU quota shared out)
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_batch_size: int = 64

    def describe(self) -> str:
        preferred = ",".join(map(str, self.preferred_batch_sizes)) or "-"
        threads = self.intra_op_threads or "auto"
        return (f"workers {self.workers}, instances {self.instance_count}, threads {threads}, delay "
                f"{self.max_queue_delay_us} us, preferred {preferred}, max batch {self.max_batch_size}")

    def short(self) -> str:
        preferred = "/".join(map(str, self.preferred_batch_sizes)) or "-"
        return (f"w{self.workers} i{self.instance_count} t{self.intra_op_threads or 'a'} d{self.max_queue_delay_us} "
                f"p{preferred} m{self.max_batch_size}")

    def to_json(self) -> dict[str, Any]:
        return {"workers": self.workers, "instance_count": self.instance_count,
                "intra_op_threads": self.intra_op_threads, "max_queue_delay_microseconds": self.max_queue_delay_us,
                "preferred_batch_size": list(self.preferred_batch_sizes), "max_batch_size": self.max_batch_size}


def from_config_yaml(raw: dict[str, Any], workers: int = 1) -> TuneConfig:
    """The point a model's config.yaml (as loaded by yaml.safe_load) stands at, defaults as the server has them."""
    batching, session, group = (_mapping(raw, key) for key in ("dynamic_batching", "session", "instance_group"))
    return TuneConfig(workers=workers, instance_count=int(group.get("count", 1)),
                      intra_op_threads=int(session.get("intra_op_threads", 0)),
                      max_queue_delay_us=int(batching.get("max_queue_delay_microseconds", 0)),
                      preferred_batch_sizes=tuple(int(b) for b in batching.get("preferred_batch_size", ()) or ()),
                      max_batch_size=int(raw.get("max_batch_size", 64)))


def _mapping(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    return value if isinstance(value, dict) else {}


def to_config_yaml(raw: dict[str, Any], config: TuneConfig) -> dict[str, Any]:
    """`raw` (a model's config.yaml) with the tuned keys set; key order kept, new keys appended."""
    out = copy.deepcopy(raw)
    out["max_batch_size"] = config.max_batch_size
    batching = out.get("dynamic_batching")
    batching = dict(batching) if isinstance(batching, dict) else {}
    batching["max_queue_delay_microseconds"] = config.max_queue_delay_us
    if config.preferred_batch_sizes:
        batching["preferred_batch_size"] = list(config.preferred_batch_sizes)
    else:
        batching.pop("preferred_batch_size", None)
    out["dynamic_batching"] = batching
    out["instance_group"] = {**(out.get("instance_group") or {}), "count": config.instance_count}
    session = dict(out.get("session") or {})
    if config.intra_op_threads:
        session["intra_op_threads"] = config.intra_op_threads
    else:
        session.pop("intra_op_threads", None)
    if session:
        out["session"] = session
    else:
        out.pop("session", None)
    return out


@dataclass(frozen=True, slots=True)
class Space:
    """The values each knob takes on a machine of `cpus` CPUs; `vary_workers` only when the tuner starts the
    servers itself (a live server's --workers is fixed)."""

    cpus: int
    vary_workers: bool
    model_max_batch: int = 64

    def parallelism(self, base: TuneConfig) -> list[TuneConfig]:
        """(workers, instances, threads) that fit the CPUs: processes x instances x threads <= CPUs."""
        options = [base]
        for workers in (1, 2, 4) if self.vary_workers else (base.workers,):
            for instances in (1, 2, 4):
                # A live server's workers are what they are, even beyond the CPUs: then one instance each.
                if workers * instances > max(1, self.cpus) and not (instances == 1 and workers == base.workers):
                    continue
                # 0 is the server's own sizing, the CPUs shared out (cpus // (workers x instances)); 1 leaves the
                # rest to the event loop and gRPC's threads.
                for threads in (0, 1):
                    options.append(replace(base, workers=workers, instance_count=instances, intra_op_threads=threads))
        return _unique(options)

    def delays(self, base: TuneConfig) -> list[TuneConfig]:
        return _unique([replace(base, max_queue_delay_us=d) for d in sorted({*DELAYS_US, base.max_queue_delay_us})])

    def preferred(self, base: TuneConfig) -> list[TuneConfig]:
        choices = [p for p in (*PREFERRED_CHOICES, base.preferred_batch_sizes)
                   if all(b <= base.max_batch_size for b in p)]
        return _unique([replace(base, preferred_batch_sizes=p) for p in choices])

    def max_batches(self, base: TuneConfig) -> list[TuneConfig]:
        sizes = {m for m in MAX_BATCH_SIZES if m <= self.model_max_batch} | {base.max_batch_size}
        return _unique([replace(base, max_batch_size=m,
                                preferred_batch_sizes=tuple(b for b in base.preferred_batch_sizes if b <= m))
                        for m in sorted(sizes)])

    def finer_delays(self, base: TuneConfig) -> list[TuneConfig]:
        """Around the best delay: half and one and a half times it (the fine pass)."""
        delay = base.max_queue_delay_us
        if delay == 0:
            return [replace(base, max_queue_delay_us=100)]
        return _unique([replace(base, max_queue_delay_us=max(0, math.floor(delay * f))) for f in (0.5, 1.5)])

    def dimensions(self) -> list[tuple[str, Any]]:
        """The coarse pass, most influential knob first."""
        return [("parallelism", self.parallelism), ("max_queue_delay_microseconds", self.delays),
                ("preferred_batch_size", self.preferred), ("max_batch_size", self.max_batches)]


def _unique(configs: list[TuneConfig]) -> list[TuneConfig]:
    seen: dict[TuneConfig, None] = {}
    for config in configs:
        seen.setdefault(config, None)
    return list(seen)
