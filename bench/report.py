#!/usr/bin/python3
"""The Markdown tables of one bench/run.sh run, from its raw CSV (one value per round and metric).

    python3 bench/report.py target/bench/latest.csv

Rows give min / median / max over the rounds; ratios are of medians, against the floor of the same
run (forkserver for TCP, udpecho for UDP); per-connection figures are per round first (the round's
total / the connections it served), then min / median / max of those."""
import csv
import statistics
import sys
from collections import defaultdict

ORDER = [
    "forkserver (floor)", "udpecho (floor)", "rinetd", "rinetd -q", "rinetd echo", "rinetd (baseline)",
    "rinetd -q (baseline)", "rinetd echo (baseline)", "tcpserver", "xinetd", "openbsd-inetd", "socat",
    "rinetd tls", "stunnel4",
]


def rank(name):
    return (ORDER.index(name), name) if name in ORDER else (len(ORDER), name)


def load(path):
    meta, data = {}, defaultdict(lambda: defaultdict(dict))  # (section, case) -> server -> metric -> {round: v}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["section"] == "meta":
                meta[row["metric"]] = row["value"]
                continue
            try:
                value = float(row["value"])
            except ValueError:
                continue
            data[(row["section"], row["case"])][row["server"]].setdefault(row["metric"], {})[int(row["round"])] = value
    return meta, data


def per_round(metrics, num, den=None, scale=1.0):
    """The metric per round, or num/den per round (rounds where both exist and den > 0)."""
    a = metrics.get(num, {})
    if den is None:
        return [a[r] * scale for r in sorted(a)]
    b = metrics.get(den, {})
    return [a[r] / b[r] * scale for r in sorted(a) if b.get(r, 0) > 0]


def label(name, m, where, notes):
    """The row's name, marked when the server did not come up in some rounds (noted under the tables)."""
    failed = len(m.get("failed", {}))
    if not failed:
        return name
    notes.append(f"‡ {name}, {where}: did not come up in {failed} round{'s' if failed > 1 else ''} (see the run's log)")
    return name + " ‡"


def fmt(x, digits):
    return f"{x:,.{digits}f}"


def spread(values, digits=0):
    if not values:
        return "–"
    lo, med, hi = min(values), statistics.median(values), max(values)
    return f"{fmt(lo, digits)} / {fmt(med, digits)} / {fmt(hi, digits)}"


def med(values, digits=0):
    return fmt(statistics.median(values), digits) if values else "–"


def table(header, align, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def cases(data, section):
    def key(case):  # "hello c=8" -> ("hello", 8); handlers in the order hello, sh
        parts = case.split()
        clients = int(parts[-1].split("=")[1]) if parts and parts[-1].startswith(("c=", "n=")) else 0
        return (0 if parts[0] == "hello" else 1 if parts[0] == "sh" else 2, clients)

    return sorted((c for s, c in data if s == section), key=key)


def load_tables(meta, data, section, unit, noun, floor, titles):
    event = meta.get("perf_event") or "instructions"
    perf = "insn_total" in {m for (s, _), srv in data.items() if s == section for ms in srv.values() for m in ms}
    out, errors = [], []
    for case in cases(data, section):
        servers = data[(section, case)]
        floor_rate = statistics.median(per_round(servers[floor], "rate")) if per_round(servers.get(floor, {}), "rate") else None
        header = ["server", f"{unit}/s min / med / max", "× floor", "p50 µs", "p99 µs", f"server CPU µs/{unit} min / med / max"]
        align = "lrrrrr"
        if perf:
            header.append(f"{event}/{unit} min / med / max")
            align += "r"
        rows = []
        for name in sorted(servers, key=rank):
            m = servers[name]
            rates = per_round(m, "rate")
            ratio = f"{statistics.median(rates) / floor_rate:.2f}" if rates and floor_rate else "–"
            err = sum(m.get("err", {}).values())
            name_cell = label(name, m, titles(case), errors)
            if err:
                errors.append(f"† {name}, {titles(case)}: {err:.0f} failed {noun}s over all rounds")
                name_cell += " †"
            row = [name_cell, spread(rates), ratio, med(per_round(m, "p50_us")), med(per_round(m, "p99_us")),
                   spread(per_round(m, "cpu_ns_total", "ok", 1e-3), 1)]
            if perf:
                row.append(spread(per_round(m, "insn_total", "ok"), 0 if event == "instructions" else 3))
            rows.append(row)
        out.append(f"**{titles(case)}**\n\n" + table(header, align, rows))
    if errors:
        out.append("  \n".join(errors))
    return out


def main():
    meta, data = load(sys.argv[1])
    rounds, secs = meta.get("rounds", "?"), meta.get("seconds", "?")
    print(f"## rinetd bench: {rounds} interleaved rounds × {secs} s")
    print()
    print(f"{meta.get('date', '')}; {meta.get('machine', '')}; load average {meta.get('load_avg', '?')} at start, "
          f"{meta.get('load_avg_end', '?')} at the end.  ")
    print(f"rinetd: `{meta.get('rinetd', '?')}`" + (f"; baseline: `{meta['baseline']}`" if "baseline" in meta else "") + ".  ")
    env = meta.get("env", "").strip()
    print(f"Reproduce: `{env + ' ' if env else ''}{meta.get('command', 'bench/run.sh')}`")
    print()
    print("Each cell: min / median / max over the rounds (a round runs every server once, in rotated order); "
          "× floor = median ÷ the floor's median in the same run; "
          "p50 / p99: the median of the rounds' percentiles.")
    sections = meta.get("sections", "").split()

    if "tcp" in sections:
        print()
        print("### TCP nowait: connect, read `hello`, close (closed loop, 127.0.0.1)")
        print()
        print("Handlers: `hello` = a static C binary writing `hello\\n`; `sh` = `#!/bin/sh` + `echo hello` (dash). "
              "Server CPU = utime+stime of the server process alone (children excluded; "
              "/proc/PID/task/*/schedstat, ns resolution) over the load window ÷ connections served.")
        event = meta.get("perf_event", "")
        if event:
            print(f"{event.capitalize()} = `perf stat --no-inherit -e {event} -p PID` on the server process over the "
                  f"load window (handlers excluded) ÷ connections: unlike time, it hardly moves with the machine's noise.")
        else:
            print(f"Instructions per connection: {meta.get('perf_note', 'not measured')}.")
        print()
        titles = lambda c: f"TCP, `{c.split()[0]}` handler, {c.split()[1][2:]} client{'s' if c.split()[1] != 'c=1' else ''}"
        print("\n\n".join(load_tables(meta, data, "tcp", "conn", "connection", "forkserver (floor)", titles)))
        spawn = [(c, per_round(data[("spawn", c)]["spawnlimit"], "rate")) for c in cases(data, "spawn")]
        if spawn:
            print()
            print("The machine's spawn rate for comparison (fork + exec + wait in a loop, no network, "
                  "`spawnlimit`): " + ", ".join(f"`{c}` {spread(v)}/s" for c, v in spawn) + ".")

    if "udp" in sections:
        print()
        print("### UDP echo, 64-byte datagrams (closed loop, 127.0.0.1)")
        print()
        print("rinetd's `echo` builtin (inside its loop) against `udpecho`, a bare recvfrom/sendto loop. "
              "No peer row: openbsd-inetd's UDP builtins drop datagrams from 127.0.0.0/8 (anti-spoofing) and "
              "xinetd's internal echo-dgram answers none on loopback, so they cannot be measured here.")
        print()
        titles = lambda c: f"UDP echo, {c[2:]} client{'s' if c != 'c=1' else ''}"
        print("\n\n".join(load_tables(meta, data, "udp", "dgram", "datagram", "udpecho (floor)", titles)))

    if "tls" in sections and any(s == "tls" for s, _ in data):
        print()
        print("### TLS: rinetd's own TLS against stunnel4's exec mode (same handlers, same P-256 certificate)")
        print()
        print("Handshakes: parallel `openssl s_time -new -www /` clients, a full TLS 1.3 handshake per connection, "
              "then the static `hello` handler's answer read to EOF. Bulk: one connection moving the run's "
              "`BENCH_BULK_MIB` each way through a `socat` client (download: `head -c N /dev/zero` as the handler; "
              "upload: `wc -c` as the handler, checked). Server CPU = utime+stime of the whole server process "
              "(stunnel's per-connection threads included, handlers excluded), in clock ticks "
              "(/proc/PID/stat), over the window.")
        print()
        rows, notes = [], []
        tls_cases = sorted((c for s, c in data if s == "tls"),
                           key=lambda c: (0, int(c.split("=")[1])) if c.startswith("handshake c=") else (1, c))
        for case in tls_cases:
            servers = data[("tls", case)]
            peer = per_round(servers.get("stunnel4", {}), "rate" if case.startswith("handshake") else "mib_s")
            for name in sorted(servers, key=rank):
                m = servers[name]
                cell = label(name, m, case, notes)
                if case.startswith("handshake"):
                    values = per_round(m, "rate")
                    unit = "handshakes/s"
                    cpu = spread(per_round(m, "cpu_ticks_total", "ok", 1e4), 0) + " µs/handshake"
                else:
                    values = per_round(m, "mib_s")
                    unit = "MiB/s"
                    cpu = spread([t * 10 for t in per_round(m, "cpu_ticks_total")], 0) + " ms"
                ratio = f"{statistics.median(values) / statistics.median(peer):.2f}" if values and peer else "–"
                rows.append([case, cell, spread(values, 0 if unit != "MiB/s" else 1) + " " + unit, ratio, cpu])
        print(table(["case", "server", "min / med / max", "× stunnel4", "server CPU min / med / max"], "llrrr", rows))
        if notes:
            print("\n" + "  \n".join(notes))

    table_cases = cases(data, "table")
    if "mem" in sections and table_cases:
        print()
        print("### Memory, idle, after every listener is up (TCP services on 127.0.0.1, static `hello` handler)")
        print()
        print("KiB, from /proc/PID/status (VmRSS, RssAnon = private anonymous) and /proc/PID/smaps_rollup (Pss).")
        print()
        rows, notes = [], []
        for case in table_cases:
            for name in sorted(data[("table", case)], key=rank):
                m = data[("table", case)][name]
                rows.append([label(name, m, f"{int(case[2:]):,} services", notes), f"{int(case[2:]):,}", spread(per_round(m, "rss_kb")),
                             spread(per_round(m, "anon_kb")), spread(per_round(m, "pss_kb"))])
        print(table(["server", "services", "RSS KiB", "RssAnon KiB", "Pss KiB"], "lrrrr", rows))
        if notes:
            print("\n" + "  \n".join(notes))

    if "startup" in sections and table_cases:
        print()
        print("### Start-up")
        print()
        print("ms from exec to: every port listening (polled with sock_diag netlink dumps, no connection made; "
              "resolution about 1 ms), then the last port served (a connection reads `hello`: the loop runs and spawns).")
        print()
        rows, notes = [], []
        for case in table_cases:
            for name in sorted(data[("table", case)], key=rank):
                m = data[("table", case)][name]
                rows.append([label(name, m, f"{int(case[2:]):,} services", notes), f"{int(case[2:]):,}", spread(per_round(m, "listen_ms"), 1),
                             spread(per_round(m, "serve_ms"), 1)])
        print(table(["server", "services", "all listening ms", "last port served ms"], "lrrr", rows))
        if notes:
            print("\n" + "  \n".join(notes))

    handler_cases = sorted((c for s, c in data if s == "handlers"),
                           key=lambda c: (int(c.split()[1][2:]), int(c.split()[0][5:])))
    if "handlers" in sections and handler_cases:
        print()
        print("### Connections while long-running handlers run")
        print()
        print("rinetd serving two services: `hello` (the static C handler) under load, and `hold`, whose static C "
              "handler only waits for its signal; measured with none and with N `hold` handlers running. "
              "Server CPU as for TCP. CPU ratio = median CPU per connection with N running ÷ with none "
              "(1.00: the cost of a connection does not grow with the handlers running).")
        print()
        rows, notes = [], []
        for case in handler_cases:
            held, clients = case.split()
            idle = data.get(("handlers", f"held=0 {clients}"), {})
            for name in sorted(data[("handlers", case)], key=rank):
                m = data[("handlers", case)][name]
                cpu = per_round(m, "cpu_ns_total", "ok", 1e-3)
                base = per_round(idle.get(name, {}), "cpu_ns_total", "ok", 1e-3)
                ratio = f"{statistics.median(cpu) / statistics.median(base):.2f}" if cpu and base else "–"
                rows.append([label(name, m, case, notes), clients[2:], f"{int(held[5:]):,}",
                             spread(per_round(m, "rate")), spread(cpu, 1), ratio])
        print(table(["server", "clients", "handlers running", "conn/s min / med / max",
                     "server CPU µs/conn min / med / max", "CPU ratio"], "lrrrrr", rows))
        if notes:
            print("\n" + "  \n".join(notes))

    if "reload" in sections and ("table", "n=1000") in data:
        print()
        print("### Reload, 1,000 services, one moved to a new port")
        print()
        print("External: ms from SIGHUP until the moved service serves on its new port. rinetd's own log figures: "
              "`reload checked duration=Xs` and `reloaded … duration=Ys` (1 ms resolution), and their sum.")
        print()
        rows, notes = [], []
        for name in sorted(data[("table", "n=1000")], key=rank):
            m = data[("table", "n=1000")][name]
            cell = label(name, m, "1,000 services", notes)
            bad = len(m.get("reload_failed", {}))
            if bad:
                notes.append(f"§ {name}: the moved service did not answer within 10 s of SIGHUP in {bad} round{'s' if bad > 1 else ''}")
                cell += " §"
            check, apply = m.get("reload_check_ms", {}), m.get("reload_apply_ms", {})
            total = [check[r] + apply[r] for r in sorted(check) if r in apply]
            rows.append([cell, spread(per_round(m, "reload_answer_ms"), 1), spread(per_round(m, "reload_check_ms")),
                         spread(per_round(m, "reload_apply_ms")), spread(total)])
        print(table(["server", "SIGHUP → answers ms", "read + check ms", "apply ms", "sum ms"], "lrrrr", rows))
        if notes:
            print("\n" + "  \n".join(notes))


if __name__ == "__main__":
    main()
