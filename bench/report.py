"""Turns bench/run's measurements into latest.json, latest.md (a table, the ratios to
HAProxy and the targets, the bad neighbour's effect on good callers) and chart.svg."""

import json
import sys
from pathlib import Path

rows_path, out_dir, smoke = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "true"
rows = {row["target"]: row for row in map(json.loads, Path(rows_path).read_text().splitlines())}
counts = (rows.get("counts") or {}).get("counts") or {}
neighbours = {name[len("neighbour-"):]: row["neighbour"] for name, row in rows.items() if "neighbour" in row}
# bench/h2load's rows: h2load-PROXY-SHAPE.
h2load = {name[len("h2load-"):]: row["h2load"] for name, row in rows.items() if "h2load" in row}
order = ["direct", "gatehouse-jwt", "gatehouse-jwt-schema", "gatehouse-apikey", "gatehouse-global", "gatehouse-mtls", "haproxy-jwt", "haproxy-forward", "nginx-forward", "outbound-gatehouse", "outbound-haproxy"]
rows = {name: rows[name] for name in order if name in rows}


def mib(kib):
    return None if kib is None else kib / 1024


def per_connection_kib(row):
    idle = row.get("idle")
    if not idle:
        return None
    return (idle["rss_with_kib"] - idle["rss_before_kib"]) / idle["connections"]


def first_connections_kib(row):
    """What the warm-up connections grew the RSS by, in all: code paged in and the
    allocator's first arena, paid once (None for results taken before it was measured)."""
    idle = row.get("idle") or {}
    if idle.get("rss_fresh_kib") is None:
        return None
    return idle["rss_before_kib"] - idle["rss_fresh_kib"]


def per_connection_anon_kib(row):
    """Per idle connection, the process's own memory only (RssAnon), without code pages."""
    idle = row.get("idle") or {}
    if idle.get("anon_with_kib") is None:
        return None
    return (idle["anon_with_kib"] - idle["anon_before_kib"]) / idle["connections"]


def stream_growth_mib(row):
    if row.get("stream_rss_peak_kib") is None or row.get("stream_rss_before_kib") is None:
        return None
    return (row["stream_rss_peak_kib"] - row["stream_rss_before_kib"]) / 1024


def fmt(value, digits=1):
    return "–" if value is None else f"{value:,.{digits}f}"


summary = {}
for name, row in rows.items():
    latency = row.get("latency") or {}
    summary[name] = {
        "calls_per_second": row["saturation"]["calls_per_second"],
        "errors": row["saturation"]["errors"] + (latency.get("errors") or 0),
        "p50_us": latency.get("p50_us"),
        "p90_us": latency.get("p90_us"),
        "p99_us": latency.get("p99_us"),
        "p999_us": latency.get("p999_us"),
        "max_us": latency.get("max_us"),
        "saturation_p999_us": row["saturation"].get("p999_us"),
        "cpu_us_per_call": row.get("cpu_us_per_call"),
        "rss_idle_mib": mib(row.get("rss_idle_kib")),
        "rss_peak_under_load_mib": mib(row.get("rss_peak_under_load_kib")),
        "kib_per_idle_connection": per_connection_kib(row),
        "kib_per_idle_connection_anon": per_connection_anon_kib(row),
        "first_connections_kib": first_connections_kib(row),
        "stream_megabytes_per_second": row["stream"]["megabytes_per_second"],
        "stream_bytes": row["stream"]["bytes"],
        "stream_rss_growth_mib": stream_growth_mib(row),
    }


def ratio(a, b, key):
    x, y = summary.get(a, {}).get(key), summary.get(b, {}).get(key)
    return None if x is None or y in (None, 0) else x / y


def h2load_ratio(a, b, shape, key="cpu_us_per_call"):
    x, y = (h2load.get(f"{a}-{shape}") or {}).get(key), (h2load.get(f"{b}-{shape}") or {}).get(key)
    return None if x is None or y in (None, 0) else x / y


targets = [
    ("CPU per call, gatehouse mTLS+JWT / HAProxy forwarding only", ratio("gatehouse-jwt", "haproxy-forward", "cpu_us_per_call"), "≤ 1.0"),
    ("p99.9 under saturation, gatehouse mTLS+JWT / HAProxy mTLS+JWT", ratio("gatehouse-jwt", "haproxy-jwt", "saturation_p999_us"), "≤ 1.0"),
    ("CPU per call, gatehouse mTLS+JWT / HAProxy mTLS+JWT", ratio("gatehouse-jwt", "haproxy-jwt", "cpu_us_per_call"), "(for reference)"),
    ("CPU per call, gatehouse mTLS+JWT / nginx forwarding only", ratio("gatehouse-jwt", "nginx-forward", "cpu_us_per_call"), "≤ 1.0"),
    ("throughput on one core, gatehouse mTLS+JWT / nginx forwarding only", ratio("gatehouse-jwt", "nginx-forward", "calls_per_second"), "(for reference)"),
    ("throughput on one core, gatehouse mTLS+JWT / HAProxy mTLS+JWT", ratio("gatehouse-jwt", "haproxy-jwt", "calls_per_second"), "≥ 2.0"),
    ("p99 at the fixed rate, gatehouse mTLS+JWT / HAProxy mTLS+JWT", ratio("gatehouse-jwt", "haproxy-jwt", "p99_us"), "≤ 1.0"),
    ("p99.9 at the fixed rate, gatehouse mTLS+JWT / HAProxy mTLS+JWT", ratio("gatehouse-jwt", "haproxy-jwt", "p999_us"), "≤ 1.0"),
    ("p99 at the fixed rate, gatehouse mTLS+JWT / nginx forwarding only", ratio("gatehouse-jwt", "nginx-forward", "p99_us"), "(for reference)"),
    ("CPU per call, gatehouse mTLS+JWT with schema and a field rule (1 KiB) / without", ratio("gatehouse-jwt-schema", "gatehouse-jwt", "cpu_us_per_call"), "≤ 1.05"),
    ("p50 at the fixed rate, gatehouse mTLS+JWT with schema and a field rule / without", ratio("gatehouse-jwt-schema", "gatehouse-jwt", "p50_us"), "(for reference)"),
    ("outbound: CPU per call, both gatehouses / both HAProxies (egress + ingress with JWT)", ratio("outbound-gatehouse", "outbound-haproxy", "cpu_us_per_call"), "≤ 1.0"),
    ("outbound: throughput, both gatehouses / both HAProxies", ratio("outbound-gatehouse", "outbound-haproxy", "calls_per_second"), "(for reference)"),
    ("outbound: throughput, both gatehouses / the app called directly", ratio("outbound-gatehouse", "direct", "calls_per_second"), "(for reference)"),
    ("outbound: p99 at the fixed rate, both gatehouses / both HAProxies", ratio("outbound-gatehouse", "outbound-haproxy", "p99_us"), "≤ 1.0"),
    ("global limits: CPU per call, on / off (gatehouse-global / gatehouse-apikey)", ratio("gatehouse-global", "gatehouse-apikey", "cpu_us_per_call"), "≤ 1.05"),
    ("global limits: p50 at the fixed rate, on / off", ratio("gatehouse-global", "gatehouse-apikey", "p50_us"), "≤ 1.1"),
    ("global limits: p99 at the fixed rate, on / off", ratio("gatehouse-global", "gatehouse-apikey", "p99_us"), "(for reference)"),
]
for shape in ("trailers-only", "message"):
    targets += [
        (f"h2load rig, {shape}: CPU per call, gatehouse TLS+JWT / HAProxy forwarding only", h2load_ratio("gatehouse-jwt", "haproxy-forward", shape), "≤ 1.0"),
        (f"h2load rig, {shape}: CPU per call, gatehouse TLS+JWT / HAProxy TLS+JWT", h2load_ratio("gatehouse-jwt", "haproxy-jwt", shape), "≤ 0.5"),
    ]
absolute = [
    ("gatehouse idle RSS (MiB)", summary.get("gatehouse-jwt", {}).get("rss_idle_mib"), "< 8"),
    ("gatehouse KiB per idle mTLS connection", summary.get("gatehouse-jwt", {}).get("kib_per_idle_connection"), "≤ 40"),
    ("gatehouse KiB per idle mTLS connection, RssAnon only", summary.get("gatehouse-jwt", {}).get("kib_per_idle_connection_anon"), "(for reference)"),
    ("gatehouse KiB for the first (warm-up) connections, paid once", summary.get("gatehouse-jwt", {}).get("first_connections_kib"), "(for reference)"),
    ("gatehouse stream MB/s", summary.get("gatehouse-mtls", {}).get("stream_megabytes_per_second"), "≥ 1000"),
    ("gatehouse RSS growth during the stream (MiB)", summary.get("gatehouse-mtls", {}).get("stream_rss_growth_mib"), "< 16"),
    ("allocations per call (bench/micro/allocs.rs)", (counts.get("allocations") or {}).get("allocations_per_call"), "(counted)"),
    ("instructions per call (bench/callgrind)", (counts.get("instructions") or {}).get("instructions_per_call"), "(counted)"),
]


def verdict(value, target):
    """met / not met for a target written `≤ x`, `< x` or `≥ x`; – for a figure only
    given for reference, or one this run did not measure."""
    if value is None or target[:1] not in "≤<≥":
        return "–"
    bound = float(target[1:].strip())
    met = {"≤": value <= bound, "<": value < bound, "≥": value >= bound}[target[0]]
    return "met" if met else "not met"




def neighbour_summary(attack, run):
    """Good callers beside the attacker over good callers alone. A latency ratio needs
    calls that succeeded under attack; when none did it is None and the timeouts say why."""
    alone, beside = run["without"], run["with"]

    def over(key):
        x, y = beside.get(key), alone.get(key)
        return None if x is None or y in (None, 0) else x / y

    return {
        "attacker": run["attacker"],
        "rate": run["rate"],
        "without": alone,
        "with": beside,
        "p50_ratio": over("p50_us"),
        "p99_ratio": over("p99_us"),
    }


bad_neighbour = {attack: neighbour_summary(attack, run) for attack, run in neighbours.items()}

document = {
    "smoke": smoke,
    "targets": summary,
    "ratios": {name: value for name, value, _ in targets},
    "goals": [
        {"name": name, "value": value, "target": target, "verdict": verdict(value, target)}
        for name, value, target in targets + absolute
    ],
    "counts": counts,
    "h2load": h2load,
    "bad_neighbour": bad_neighbour,
}
(out_dir / "latest.json").write_text(json.dumps(document, indent=2) + "\n")

lines = [
    "| target | calls/s (saturation) | p99.9 µs (saturation) | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | CPU µs/call | RSS idle MiB | RSS peak MiB | KiB/idle conn | stream MB/s | stream RSS growth MiB |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
]
for name, s in summary.items():
    lines.append(
        f"| {name} | {fmt(s['calls_per_second'], 0)} | {fmt(s['saturation_p999_us'], 0)} | {fmt(s['p50_us'], 0)} | {fmt(s['p90_us'], 0)} | {fmt(s['p99_us'], 0)} "
        f"| {fmt(s['p999_us'], 0)} | {fmt(s['max_us'], 0)} | {fmt(s['cpu_us_per_call'])} | {fmt(s['rss_idle_mib'])} "
        f"| {fmt(s['rss_peak_under_load_mib'])} | {fmt(s['kib_per_idle_connection'])} | {fmt(s['stream_megabytes_per_second'], 0)} "
        f"| {fmt(s['stream_rss_growth_mib'])} |"
    )
if h2load:
    lines += [
        "",
        "h2load rig (bench/h2load): 8 connections × 16 streams, 1 KiB unary requests, TLS with server authentication;",
        "ratio: CPU per call over HAProxy forwarding only's with the same answer shape.",
        "",
        "| h2load rig | answer | calls | failed | calls/s | CPU µs/call | / HAProxy forwarding |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in h2load.values():
        proxy, shape = row["proxy"], row["shape"]
        lines.append(
            f"| {proxy} | {shape} | {row['calls']:,} | {row['failed']:,} | {fmt(row['calls_per_second'], 0)} "
            f"| {fmt(row.get('cpu_us_per_call'))} | {fmt(h2load_ratio(proxy, 'haproxy-forward', shape), 2)} |"
        )
lines += ["", "| ratio | value | target | |", "|---|---:|---|---|"]
lines += [f"| {name} | {fmt(value, 2)} | {target} | {verdict(value, target)} |" for name, value, target in targets]
lines += ["", "| figure | value | target | |", "|---|---:|---|---|"]
lines += [f"| {name} | {fmt(value, 0 if name.startswith('instructions') else 1)} | {target} | {verdict(value, target)} |" for name, value, target in absolute]
if bad_neighbour:
    lines += [
        "",
        "Bad neighbour: good callers through gatehouse at a fixed rate (calls/s below), each call bounded by 3 s,",
        "alone and beside one attacker. Ratios are beside / alone; – when no call succeeded beside it.",
        "",
        "| attacker | rate | alone: ok / timed out / failed | p50 µs | p99 µs | beside: ok / timed out / failed | p50 µs | p99 µs | p50 ratio | p99 ratio |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|---:|",
    ]

    def counts(run):
        return f"{run['calls']:,} / {run['timeouts']:,} / {run['errors']:,}"

    for attack, n in bad_neighbour.items():
        alone, beside = n["without"], n["with"]
        lines.append(
            f"| {attack} | {n['rate']:,} | {counts(alone)} | {fmt(alone['p50_us'], 0)} | {fmt(alone['p99_us'], 0)} "
            f"| {counts(beside)} | {fmt(beside['p50_us'], 0)} | {fmt(beside['p99_us'], 0)} "
            f"| {fmt(n['p50_ratio'], 2)} | {fmt(n['p99_ratio'], 2)} |"
        )
(out_dir / "latest.md").write_text("\n".join(lines) + "\n")

# A bar chart of CPU per call and p99, each scaled to its largest value.
proxies = [name for name in summary if summary[name]["cpu_us_per_call"] is not None]
width, bar, gap, left = 760, 16, 14, 190
height = 60 + len(proxies) * (2 * bar + gap)
cpu_max = max((summary[n]["cpu_us_per_call"] for n in proxies), default=1) or 1
p99_max = max((summary[n]["p99_us"] or 0 for n in proxies), default=1) or 1
svg = [
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
    f'<text x="10" y="20" font-size="14">CPU µs per call (blue) and p99 µs at {fmt(summary.get("haproxy-jwt", {}).get("calls_per_second", 0) / 2, 0)} calls/s (orange)</text>',
]
y = 40
for name in proxies:
    s = summary[name]
    cpu_w = (width - left - 80) * s["cpu_us_per_call"] / cpu_max
    p99_w = (width - left - 80) * (s["p99_us"] or 0) / p99_max
    svg.append(f'<text x="10" y="{y + bar + 4}">{name}</text>')
    svg.append(f'<rect x="{left}" y="{y}" width="{cpu_w:.1f}" height="{bar}" fill="#3b6ea5"/>')
    svg.append(f'<text x="{left + cpu_w + 4:.1f}" y="{y + 12}">{s["cpu_us_per_call"]:.1f}</text>')
    svg.append(f'<rect x="{left}" y="{y + bar}" width="{p99_w:.1f}" height="{bar}" fill="#e08a2c"/>')
    svg.append(f'<text x="{left + p99_w + 4:.1f}" y="{y + bar + 12}">{fmt(s["p99_us"], 0)}</text>')
    y += 2 * bar + gap
svg.append("</svg>")
(out_dir / "chart.svg").write_text("\n".join(svg) + "\n")
print("\n".join(lines))
