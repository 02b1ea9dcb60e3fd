#!/usr/bin/env python3
"""Memory per idle connection of a running proxy.

Opens N connections through the proxy at 127.0.0.1:PORT from several source addresses
(127.0.0.2, 127.0.0.3, ...; at most --per-ip each), sends one HTTP request on each and reads
the response, then leaves them all idle and reads the proxy's VmRSS (all PIDs given, summed).
Prints the RSS before, after, and the bytes per idle connection. Bounded: N connections, a
timeout per socket operation, every socket closed at the end.

    ulimit -n 65536
    python3 idle_conns.py --port 18081 --pid $(pgrep -x smartproxy) -n 10000

The proxy needs its own descriptor limit raised (two per connection) and, for smartproxy,
`max_connections_per_ip = 0` (or above --per-ip) in [defaults].
"""
import argparse
import socket
import time


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, action="append", required=True)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--per-ip", type=int, default=100)
    ap.add_argument("--settle", type=float, default=1.0)
    a = ap.parse_args()
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    before = rss_kib(a.pid)
    socks = []
    try:
        for i in range(a.n):
            ip = i // a.per_ip + 2
            src = f"127.0.{ip // 250}.{ip % 250 + 1}"
            s = socket.socket()
            s.settimeout(5)
            s.bind((src, 0))
            s.connect(("127.0.0.1", a.port))
            s.sendall(req)
            got = b""
            while b"\r\n\r\n" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    raise SystemExit(f"connection {i} closed by the proxy")
                got += chunk
            socks.append(s)
        time.sleep(a.settle)
        after = rss_kib(a.pid)
        per = (after - before) * 1024 / max(1, len(socks))
        print(f"connections={len(socks)} rss_before_kib={before} rss_after_kib={after} "
              f"bytes_per_idle_connection={per:.0f}")
    finally:
        for s in socks:
            s.close()


if __name__ == "__main__":
    main()
