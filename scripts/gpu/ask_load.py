#!/usr/bin/env python3
"""Streamed /ask against a running kb serve (standard library only, for machines without the
`load` example): CLIENTS concurrent clients each ask QUESTIONS questions taken from a BEIR
queries.jsonl; prints time to first token and total time (p50 / max) and text pieces per answer.

Usage: ask_load.py URL COLLECTION QUERIES.jsonl CLIENTS QUESTIONS"""
import http.client
import json
import sys
import threading
import time
from urllib.parse import urlparse


def ask(url, collection, question, out):
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({"question": question, "stream": True})
    t = time.perf_counter()
    conn.request("POST", f"/v1/collections/{collection}/ask", body, {"Content-Type": "application/json"})
    res = conn.getresponse()
    if res.status != 200:
        out.append(("error", res.status, res.read()[:200]))
        return
    first, pieces, event = None, 0, ""
    for raw in res:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "token":
            if first is None:
                first = time.perf_counter() - t
            pieces += 1
    total = time.perf_counter() - t
    out.append(("ok", first if first is not None else total, total, pieces))


def pct(xs, p):
    xs = sorted(xs)
    return xs[round((len(xs) - 1) * p)] if xs else float("nan")


def main():
    url, collection, queries, clients, per = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    qs = [json.loads(l)["text"] for l in open(queries) if l.strip()]
    results = []
    def client(c):
        for i in range(per):
            ask(url, collection, qs[(c * per + i) % len(qs)], results)
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    ok = [r for r in results if r[0] == "ok"]
    errors = [r for r in results if r[0] != "ok"]
    ttft = [r[1] * 1e3 for r in ok]
    total = [r[2] * 1e3 for r in ok]
    print(f"ask (streamed): {clients} clients, {len(ok)} answers in {time.perf_counter() - start:.1f} s, "
          f"{len(errors)} errors; time to first token ms p50 {pct(ttft, 0.5):.0f} max {max(ttft, default=float('nan')):.0f}; "
          f"total ms p50 {pct(total, 0.5):.0f} max {max(total, default=float('nan')):.0f}; "
          f"{sum(r[3] for r in ok) / max(len(ok), 1):.1f} text pieces per answer", flush=True)
    for e in errors[:3]:
        print("error:", e)


if __name__ == "__main__":
    main()
