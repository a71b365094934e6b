#!/usr/bin/env python3
"""CPU each process used during each phase of an `oncely bench` run: PostgreSQL, the broker
(nats-server, RabbitMQ's beam.smp, tansu) and the bench itself. Samples /proc/PID/stat every
200 ms and reads the phases from the bench's progress lines (it draws them on a terminal, so
it runs under a pseudo-terminal here).

    python3 bench/floors/cpu.py ./target/release/oncely --store URL bench --broker URL
"""
import os, pty, re, subprocess, sys, threading, time

GROUPS = {"postgres": "postgres", "nats-server": "nats", "beam.smp": "rabbitmq",
          "tansu": "tansu", "oncely": "bench (consumer)", "mariadbd": "mariadb"}
TICK = os.sysconf("SC_CLK_TCK")

def sample():
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        for prefix, group in GROUPS.items():
            if name.startswith(prefix):
                out[pid] = (group, (int(fields[11]) + int(fields[12])) / TICK)
    return out

master, slave = pty.openpty()
bench = subprocess.Popen(sys.argv[1:], stderr=slave)
os.close(slave)
lines = []  # (time, phase) of each progress line

def read():
    buf = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            return
        if not chunk:
            return
        *done, buf = re.split(rb"[\r\n]", buf + chunk)
        for line in done:
            text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line.decode(errors="replace")).strip()
            m = re.match(r"(\w[\w ]*?) \[", text)
            if m:
                lines.append((time.time(), m.group(1)))

reader = threading.Thread(target=read)
reader.start()
samples = []
while bench.poll() is None:
    samples.append((time.time(), sample()))
    time.sleep(0.2)
reader.join()

phases = []  # (name, first, last) in order
for t, name in lines:
    if phases and phases[-1][0] == name:
        phases[-1][2] = t
    else:
        phases.append([name, t, t])
# A phase lasts until the next one's first line (the last, until the bench exits).
# Progress is drawn a few times a second: phases much shorter than a second are not measured.
ends = [p[1] for p in phases[1:]] + [max([phases[-1][2]] + [t for t, _ in samples[-1:]])]
for (name, t0, _), t1 in zip(phases, ends):
    first, last = {}, {}
    for t, s in samples:
        if t0 <= t <= t1:
            for pid, (group, cpu) in s.items():
                first.setdefault(pid, cpu)
                last[pid] = (group, cpu)
    used = {}
    for pid, (group, cpu) in last.items():
        used[group] = used.get(group, 0.0) + cpu - first[pid]
    shown = ", ".join(f"{g} {v:.2f} s" for g, v in sorted(used.items()) if v > 0.005)
    print(f"{name}: {t1 - t0:.2f} s wall; CPU {shown}", file=sys.stderr)
sys.exit(bench.returncode)
