"""The later sections of docs/benchmarks.md: ResNet-18, the Classify API, the py-spy profile, the run's notes and
the commands behind every number."""

from __future__ import annotations

from benchmarks.servers import PEER_ARGS, peer_command
from benchmarks.tables import Doc, n, server_field

RESNET_SERIES = (("onnx-serve-resnet18", "onnx-serve (batching on)"),
                 ("pytriton-resnet18", "Triton 2.51 + Python backend (PyTriton)"),
                 ("mlserver-resnet18", "MLServer (in-process, no batching)"),
                 ("kserve-resnet18", "KServe"))


def resnet_section(doc: Doc) -> None:
    state = doc.state
    raw = state.raw.get("resnet18")
    if not raw:
        return
    doc.add("## ResNet-18-shaped CNN, 224x224 (Python client)", "")
    best = raw["best"]["items_per_s"]
    rows = [[f"raw ONNX Runtime, batch {r['batch_size']}", n(r["items_per_s"], 1), "", "",
             f"{r['latency_ms']['p50']:.1f}"] for r in raw["results"]]
    for key, label in RESNET_SERIES:
        for c in (1, 8):
            level = doc.level(key, c)
            if level:
                rows.append([f"{label}, c={c}", n(level["items_per_s"], 1), n(level["items_per_s"] / best, 2),
                             n(server_field(level, "avg_batch_size"), 2),
                             f"{level['latency_ms']['p50']:.1f}" + ("" if level["stable"] else " ~")])
    doc.table(["configuration", "images/s", "/ raw best", "avg batch", "p50 ms"], rows)


def details(doc: Doc) -> None:
    state = doc.state
    classify = state.runs.get("onnx-serve-classify")
    if classify:
        doc.add("## Classify API (Python client)", "",
                f"{classify['request']}; decode + resize + normalize on the server.", "")
        doc.table(["c", "images/s", "p50 ms", "p99 ms"],
                  [[str(lv["concurrency"]), n(lv["items_per_s"]), f"{lv['latency_ms']['p50']:.2f}",
                    f"{lv['latency_ms']['p99']:.2f}"] for lv in classify["levels"]])
    from onnx_serve.bench.report import notes_for

    cpus = state.settings["machine"]["cpu_quota"]  # notes again: with --repeat, the levels are each the best pass
    _profile_section(doc)
    notes = [f"- {key}: {note}" for key, run in state.runs.items() for note in notes_for(run["levels"], cpus)]
    notes += [f"- {key}: {note}" for key, run in state.runs.items() for note in run.get("notes", [])
              if note.startswith(("the server has no ModelStatistics", "counted with"))]  # the driver's, kept
    notes += [f"- skipped: {item}" for item in state.skipped]
    if notes:
        doc.add("## Notes from this run", "", *notes, "")
    doc.add("## Commands", "", "Servers (one at a time, each on free ports; `$URL` below is its address):", "", "```",
            "onnx-serve serve --model-repository REPO --host 127.0.0.1 --grpc-port 0 --http-port 0 --metrics-port 0 "
            "--drain-delay 0 --workers 1|2 --execution-providers cpu --grace-period 1",
            *sorted({peer_command(key.removesuffix("-resnet18")) for key in state.servers
                     if key.removesuffix("-resnet18") in PEER_ARGS}), "```", "", "Clients:", "", "```")
    doc.add(*(raw["command"] for raw in state.raw.values()))
    doc.add(*(run["command"] for run in state.runs.values()), "```", "")


def _profile_section(doc: Doc) -> None:
    profiles = getattr(doc.state, "profiles", None) or {}
    if not profiles:
        return
    first = next(iter(profiles.values()))
    doc.add(f"## Profile: onnx-serve at c={first['concurrency']} (py-spy, Python client)", "",
            f"`py-spy record --threads --nonblocking` on the server and on the bench client for {first['seconds']} s "
            "(raw stacks in `bench-results/profile-*.txt`). Shares are of the samples in which a thread was running "
            "Python or native code. Self time in `Handle._run (asyncio/events.py)` is native code called from an "
            "event-loop callback: grpc.aio's Cython core (HTTP/2, completion queue, message (de)serialization).", "")
    for name, profile in profiles.items():
        if not profile.get("samples"):
            continue
        threads = ", ".join(f"{thread} {share:.0f}%" for thread, share in profile["threads"].items())
        doc.add(f"**{name}** ({profile['samples']} samples): {threads}.", "")
        rows = []
        for index in range(max(len(profile["self"]), len(profile["inclusive"]))):
            own = profile["self"][index] if index < len(profile["self"]) else ("", None)
            incl = profile["inclusive"][index] if index < len(profile["inclusive"]) else ("", None)
            rows.append([f"`{own[0]}`" if own[0] else "", n(own[1], 1), f"`{incl[0]}`" if incl[0] else "",
                         n(incl[1], 1)])
        doc.table(["event-loop thread: self", "%", "inclusive (beyond the loop itself)", "%"], rows)
