#!/usr/bin/env python3
"""Where the host's CPU goes, stage by stage, from a perf profile of the
throughput bench (issue #15):

    HOOKWASM_BENCH_PERF=/tmp/host.perf HOOKWASM_BENCH_EVENTS=20000 cargo bench --bench throughput
    perf script -i /tmp/host.perf -F comm,tid,ip,sym --no-inline > /tmp/host.script
    python3 benches/stages.py /tmp/host.script

Each sample goes to the stage of the nearest frame (from the leaf up) that names
one, so an allocation or a system call counts for the stage that made it; the
store's writer thread counts as the store whatever it runs.
"""
import collections
import re
import sys
stages=[
 ("plugin call (wasmtime, guest code)", r"wasmtime|hookwasm::plugin|cranelift|\[unknown\]"),
 ("signing (HMAC-SHA256)", r"hmac|sha2|deliver::sign|Secret::"),
 ("event parse (JSON)", r"hookwasm::event::|serde_json|simd_json"),
 ("store writes and reads (SQLite)", r"sqlite3|unixWrite|unixSync|walChecksum|pcache1|hookwasm::store|rusqlite|fdatasync"),
 ("queue (claims, hand-offs)", r"hookwasm::queue"),
 ("delivery HTTP out (reqwest, hyper client)", r"reqwest|hyper_util::client|hyper::client"),
 ("ingest HTTP in (hyper server, axum, API)", r"hyper::server|axum|hookwasm::api|tower"),
 ("worker logic (render, attempt, retry)", r"hookwasm::deliver|hookwasm::route|hookwasm::model"),
 ("socket reads and writes (kernel TCP, both directions, via tokio's I/O driver)", r"Registration::poll_io|TcpStream::poll_|io::driver::Driver::turn"),
 ("tokio scheduling, wake-ups, timers", r"tokio::"),
]
cnt=collections.Counter(); total=0
for block in open(sys.argv[1]).read().split("\n\n"):
    lines=[l for l in block.strip().split("\n") if l.strip()]
    if not lines: continue
    head=lines[0]; frames=[l.strip().split(" ",1)[1] if " " in l.strip() else "" for l in lines[1:]]
    total+=1
    if head.startswith("store-writer"):
        cnt["store writes and reads (SQLite)"]+=1; continue
    hit=None
    for f in frames:
        for name,pat in stages:
            if re.search(pat,f): hit=name; break
        if hit: break
    cnt[hit or "other (kernel/libc with no host frame)"]+=1
for k,v in cnt.most_common():
    print(f"| {k} | {100*v/total:.1f} % |")
print("samples",total)
