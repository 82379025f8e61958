"""results.json -> the targets (met / not met) and RESULTS.md.

Re-render without running anything: ``python bench/report.py bench/results.json > bench/RESULTS.md``.
The hand-written ``bench/ANALYSIS.md`` (profiles, and the reasons behind missed targets) is appended
when it exists.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ANALYSIS = Path(__file__).with_name("ANALYSIS.md")
ORDER = ("hasupd", "supervisord", "circus")
PROBES_PENDING = "not yet measurable: hasupd health probes land with the freeze-detection issue"
Row = list[Any]


def _get(data: Any, *keys: str) -> Any:
    """Return ``data[k1][k2]...``, or None where a key is missing."""
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _target(name: str, goal: str, measured: str, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": measured, "met": met, "note": note}


def _crash_note(sc: dict[str, Any], size: str) -> str:
    crash = _get(sc, "startup_and_idle", "crashes", size, "hasupd")
    if not crash:
        return ""
    return f"hasupd as configured crashed ({crash['error']}); measured with: {crash['workaround']}"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Return each target with its measured value and whether it was met (None: not measurable yet)."""
    sc = results.get("scenarios", {})
    out = []
    lat = _get(sc, "restart_latency", "supervisors", "hasupd")
    if lat and lat["sh"].get("n"):
        sh, py = lat["sh"], lat["python"]
        sh_p99, py_p99 = sh.get("p99", sh["max"]), py.get("p99", py["max"])
        floor = _get(sc, "restart_latency", "direct_spawn")
        floor_sh, floor_py = _get(floor, "sh", "median"), _get(floor, "python", "median")
        out.append(
            _target(
                "restart latency at zero delay, /bin/sh child",
                "p99 <= 10 ms (kill -> first action of the child)",
                f"sh p99 {sh_p99} ms (p50 {sh['median']})",
                sh_p99 <= 10,
                f"floor (spawned directly by the harness): p50 {floor_sh} ms, p99 "
                f"{_get(floor, 'sh', 'p99')} ms; hasupd p50 / floor p50 {_ratio(sh['median'], floor_sh)}",
            )
        )
        out.append(
            _target(
                "restart latency at zero delay, Python child",
                "p99 <= 25 ms",
                f"python p99 {py_p99} ms (p50 {py['median']})",
                py_p99 <= 25,
                f"floor: p50 {floor_py} ms; hasupd p50 / floor p50 {_ratio(py['median'], floor_py)}",
            )
        )
    idle = _get(sc, "startup_and_idle", "idle", "500", "hasupd")
    if idle:
        cpu = max(i["cpu_percent"] for i in idle)
        rss = max(i["rss_mb_max"] for i in idle)
        note = _crash_note(sc, "500")
        out.append(_target("idle CPU, 500 services", "< 1 % of a core", f"{cpu} %", cpu < 1, note))
        out.append(_target("idle RSS, 500 services", "<= 40 MB", f"{rss} MB", rss <= 40, note))
    start = _get(sc, "startup_and_idle", "startup_sec", "500", "hasupd")
    if start and start.get("n"):
        crashed = bool(_crash_note(sc, "500"))
        peers = {
            n: v["median"]
            for n, v in _get(sc, "startup_and_idle", "startup_sec", "500").items()
            if n != "hasupd" and v.get("n")
        }
        ahead = all(start["median"] < v for v in peers.values())
        shown = ", ".join(f"{n} {v} s" for n, v in peers.items())
        out.append(
            _target(
                "start-up, 500 services",
                "all running within 1.0 s, and ahead of both peers",
                f"median {start['median']} s (range {start['min']} - {start['max']} s); {shown}",
                start["median"] <= 1.0 and ahead and not crashed,
                _crash_note(sc, "500"),
            )
        )
    stopped = _get(sc, "stop", "stop_sec", "hasupd")
    if stopped and stopped.get("n"):
        size = _get(sc, "stop", "services")
        out.append(
            _target(
                f"stop, {size} services",
                "<= 0.15 s (SIGTERM -> supervisor gone, no service process left)",
                f"median {stopped['median']} s (range {stopped['min']} - {stopped['max']} s)",
                stopped["median"] <= 0.15,
            )
        )
    journal = _get(sc, "output", "variants", "hasupd/journal", "supervisor_cpu_sec_per_100mb")
    if journal and journal.get("n"):
        file_cost = _get(sc, "output", "variants", "hasupd/file", "supervisor_cpu_sec_per_100mb", "median")
        out.append(
            _target(
                "output: journal costs hasupd no CPU per byte",
                "hasupd CPU per 100 MB indistinguishable from 0 (<= 0.05 s: 5 clock ticks)",
                f"{journal['max']} s per 100 MB at most (output: file costs {file_cost} s)",
                journal["max"] <= 0.05,
            )
        )
    mine = _get(sc, "output", "variants", "hasupd/file", "throughput_mb_s", "median")
    theirs = _get(sc, "output", "variants", "supervisord/file", "throughput_mb_s", "median")
    if mine and theirs:
        ratio = mine / theirs
        out.append(
            _target(
                "output: file throughput",
                ">= 5x supervisord's",
                f"{mine} vs {theirs} MB/s: {ratio:.1f}x",
                ratio >= 5,
            )
        )
    probes = _get(sc, "probes", "hasupd")
    if probes and probes.get("measured"):
        what = f"HTTP probes, {probes['services']} services"
        out.append(_target(what, "(no target set)", f"{probes['cpu_percent']} % of a core", None))
    elif probes:
        out.append(_target("HTTP probes", "(no target set)", PROBES_PENDING, None, probes["reason"]))
    return out


# --------------------------------------------------------------------------- markdown helpers


def _names(per: dict[str, Any]) -> list[str]:
    """Return the supervisors in ``per`` in the report's order."""
    return [n for n in ORDER if n in per] + [n for n in per if n not in ORDER]


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return ""
    return f"{value / base:.2f}x"


def _rng(s: dict[str, Any] | None, unit: str = "") -> str:
    """Return "median (min - max)" of a summary, or the one value."""
    if not s or not s.get("n"):
        return "-"
    if s["n"] == 1:
        return f"{s['median']}{unit}"
    return f"{s['median']}{unit} ({s['min']} - {s['max']})"


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


# --------------------------------------------------------------------------- sections


def _latency(sc: dict[str, Any]) -> list[str]:
    sups = sc["supervisors"]
    rows: list[Row] = []
    for kind in ("sh", "python"):
        base = _get(sups, "hasupd", kind, "median")
        d = sc["direct_spawn"][kind]
        rows.append(
            [
                "no supervisor (direct spawn)",
                kind,
                d.get("n"),
                d.get("median"),
                d.get("p95", "-"),
                d.get("p99", "-"),
                d.get("min"),
                d.get("max"),
                "",
            ]
        )
        for name in _names(sups):
            s = sups[name][kind]
            rows.append(
                [
                    name,
                    kind,
                    s["n"],
                    s["median"],
                    s.get("p95", "-"),
                    s.get("p99", "-"),
                    s["min"],
                    s["max"],
                    _ratio(s["median"], base),
                ]
            )
    out = ["## 1. Restart latency: SIGKILL -> first action of the new process (ms)", ""]
    out += _table(["", "child", "kills", "p50", "p95", "p99", "min", "max", "p50 vs hasupd"], rows)
    fails = {n: v["failures"] for n, v in sups.items() if v["failures"]}
    if fails:
        out += [f"Kills that got no restart within 15 s: {fails}", ""]
    return out


def _crash(sc: dict[str, Any]) -> list[str]:
    rate, give = sc["rate"], sc["give_up"]
    base = _get(rate, "hasupd", "restarts_per_sec", "median")
    out = ["## 2. Crash loop: a program that exits 1 at once", ""]
    out += [f"At the minimum restart delay, {sc['window_sec']:g} s per run, median (range):", ""]
    rows = [
        [
            n,
            _rng(rate[n]["restarts_per_sec"]),
            _rng(rate[n]["cpu_percent"], " %"),
            _ratio(_get(rate, n, "restarts_per_sec", "median"), base),
        ]
        for n in _names(rate)
    ]
    out += _table(["", "restarts/s", "supervisor CPU (% of a core)", "restarts/s vs hasupd"], rows)
    out += ["With a limit of 5 starts and each supervisor's default backoff (settings below):", ""]
    rows = []
    for n in _names(give):
        for run in give[n]:
            cap = f"did not give up within {sc['give_up_cap_sec']:g} s"
            when = f"{run['seconds_to_give_up']} s" if run["gave_up"] else cap
            rows.append([n, run["starts"], when, f"{run['last_start_after_sec']} s"])
    out += _table(
        ["", "starts seen", "gave up after (first start -> give-up record)", "last start after"], rows
    )
    return out


def _idle(sc: dict[str, Any]) -> list[str]:
    out = ["## 3. Idle cost: services running `sleep infinity`", ""]
    out += [
        f"One window of {sc['idle_window_sec']:g} s per size and supervisor, after all services ran and a "
        "settle pause. CPU: utime+stime of the supervisor process (all its threads) over the window. RSS: "
        "the largest of one sample per second.",
        "",
    ]
    rows: list[Row] = []
    for size, per in sc["idle"].items():
        base = per["hasupd"][0] if per.get("hasupd") else {}
        for n in _names(per):
            for run in per[n]:
                marked = f"{n} *" if n in sc.get("crashes", {}).get(size, {}) else n
                rows.append(
                    [
                        size,
                        marked,
                        f"{run['cpu_percent']} %",
                        f"{run['rss_mb_max']} MB",
                        f"{run['children_running']}/{run['services']}",
                        _ratio(run["cpu_percent"], base.get("cpu_percent")),
                        _ratio(run["rss_mb_max"], base.get("rss_mb_max")),
                    ]
                )
    out += _table(
        ["services", "", "CPU (% of a core)", "RSS", "children up", "CPU vs hasupd", "RSS vs hasupd"], rows
    )
    return out + _crash_notes(sc)


def _crash_notes(sc: dict[str, Any]) -> list[str]:
    notes = [
        f"\\* {size} services, {name}: crashed as configured ({c['error']}); the run was repeated with: "
        f"{c['workaround']}. See ANALYSIS below."
        for size, per in sc.get("crashes", {}).items()
        for name, c in per.items()
    ]
    return [*notes, ""] if notes else []


def _startup(sc: dict[str, Any]) -> list[str]:
    out = ["## 4. Start-up: supervisor launch -> every service's program has reported running (s)", ""]
    rows: list[Row] = []
    for size, per in sc["startup_sec"].items():
        base = _get(per, "hasupd", "median")
        for n in _names(per):
            marked = f"{n} *" if n in sc.get("crashes", {}).get(size, {}) else n
            rows.append([size, marked, _rng(per[n]), _ratio(_get(per, n, "median"), base)])
    out += _table(["services", "", "seconds, median (range)", "vs hasupd"], rows)
    return out + _crash_notes(sc)


def _startup_idle(sc: dict[str, Any]) -> list[str]:
    return _idle(sc) + _startup(sc)


def _output(sc: dict[str, Any]) -> list[str]:
    var = sc["variants"]
    base = _get(var, "hasupd/file", "throughput_mb_s", "median")
    direct_file = sc["direct_file"]
    out = [f"## 5. Output: {sc['bytes'] / 1e6:g} MB of 100-byte lines, written as fast as possible", ""]
    out += [
        f"The writer alone: to /dev/null {_rng(sc['direct_devnull']['writer_sec'], ' s')}; straight into a "
        f"file {_rng(direct_file['writer_sec'], ' s')} ({_rng(direct_file['throughput_mb_s'])} MB/s). "
        "Throughput is measured until the last line is in the log file (journal: until the writer is done). "
        f"Journal: {sc['journal']}.",
        "",
    ]
    rows: list[Row] = []
    for name in sorted(var, key=lambda v: (ORDER.index(v.split("/")[0]), v)):
        v = var[name]
        jd = _rng(v["journald_cpu_sec_per_100mb"], " s") if "journald_cpu_sec_per_100mb" in v else ""
        rb = _rng(v["readback_cpu_sec_per_100mb"], " s") if "readback_cpu_sec_per_100mb" in v else ""
        rows.append(
            [
                name,
                _rng(v["throughput_mb_s"]),
                _rng(v["writer_sec"], " s"),
                _rng(v["writer_slowdown"], "x"),
                _rng(v["supervisor_cpu_sec_per_100mb"], " s"),
                jd,
                rb,
                _ratio(_get(v, "throughput_mb_s", "median"), base),
            ]
        )
    header = [
        "supervisor/output",
        "MB/s",
        "writer time",
        "writer time vs /dev/null",
        "supervisor CPU per 100 MB",
        "journald CPU per 100 MB",
        "read back for error groups, CPU per 100 MB (journal filter + journalctl)",
        "MB/s vs hasupd/file",
    ]
    return out + _table(header, rows)


def _probes(sc: dict[str, Any]) -> list[str]:
    out = ["## 6. HTTP probes: services probed over HTTP once a second each (loopback)", ""]
    for n in _names(sc):
        v = sc[n]
        if v.get("measured"):
            out.append(
                f"- {n}: {v['cpu_percent']} % of a core, {v['probes_per_sec']} probes/s seen by the server"
            )
        elif n == "hasupd":
            out.append(f"- hasupd: {PROBES_PENDING} ({v['reason']})")
        else:
            out.append(f"- {n}: not measurable: {v['reason']}")
    return [*out, ""]


def _stop(sc: dict[str, Any]) -> list[str]:
    out = [f"## 7. Stop: SIGTERM -> supervisor exited and all {sc['services']} services gone (s)", ""]
    per = sc["stop_sec"]
    base = _get(per, "hasupd", "median")
    rows: list[Row] = [[n, _rng(per[n]), _ratio(_get(per, n, "median"), base)] for n in _names(per)]
    return [*out, *_table(["", "seconds, median (range)", "vs hasupd"], rows), ""]


SECTIONS = {
    "restart_latency": _latency,
    "crash_loop": _crash,
    "startup_and_idle": _startup_idle,
    "output": _output,
    "probes": _probes,
    "stop": _stop,
}


def render(results: dict[str, Any]) -> str:
    """Return RESULTS.md for ``results``."""
    meta = results["meta"]
    out = [
        "# hasupd vs supervisord vs circus",
        "",
        f"Produced by `{meta['command']}` (started {meta['started']}, {meta.get('duration_sec', '?')} s). "
        "Generated from results.json by bench/report.py; bench/README.md says what each scenario measures.",
        "",
    ]
    load = ", ".join(f"{k} {v}" for k, v in meta.get("other_load", {}).items())
    machine = [
        ["CPU", meta["cpu"]],
        ["cores", meta["cores"]],
        ["kernel", meta["kernel"]],
        ["OS", meta["os"]],
        ["Python (harness, hasupd, supervisord, circus)", meta["python"]],
        ["Python (the Python children)", meta["child_python"]],
        *[[name, version] for name, version in meta["versions"].items()],
        ["hasupd containment", meta.get("hasupd_containment", "-")],
        ["open files limit", meta["nofile"]],
        ["load average at start / end", f"{meta['loadavg_at_start']} / {meta.get('loadavg_at_end', '?')}"],
        ["cores kept busy by other processes, per scenario", load or "-"],
    ]
    out += _table(["machine", ""], machine)
    out += [
        "Runs alternate between the supervisors (A B C A B C ...). Ratios compare with hasupd's value in "
        "the same run (2.00x: twice hasupd's value).",
        "",
    ]
    out += ["## Targets", ""]
    verdict = {True: "met", False: "**not met**", None: "-"}
    out += _table(
        ["target", "goal", "measured", "", "note"],
        [
            [t["target"], t["goal"], t["measured"], verdict[t["met"]], t["note"]]
            for t in results.get("targets", [])
        ],
    )
    for key, section in SECTIONS.items():
        if key in results["scenarios"]:
            out += section(results["scenarios"][key])
    if results.get("errors"):
        out += ["## Errors", "", *[f"- {k}: {v}" for k, v in results["errors"].items()], ""]
    out += ["## Settings", ""]
    out += [meta["scaled_note"], ""] if meta.get("scaled_note") else []
    out += [*meta.get("comparable", []), ""]
    out += ["```json", json.dumps(results["settings"]), "```", ""]
    if ANALYSIS.exists():
        out += [ANALYSIS.read_text().rstrip(), ""]
    return "\n".join(out)


if __name__ == "__main__":
    data = json.loads(Path(sys.argv[1]).read_text())
    data["targets"] = targets(data)
    sys.stdout.write(render(data))
