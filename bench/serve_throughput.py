"""Serving benchmark: `domain-expert serve` (its engines) against `transformers serve --continuous-batching` and
llama.cpp's `llama-server`, side by side.

    python bench/serve_throughput.py [RUN] [--clients 1 4 16 64] [--seconds 20] [--max-tokens 48]
    python bench/serve_throughput.py [RUN] --load-test --clients 64 --seconds 60

Each server is started as a subprocess on a free 127.0.0.1 port with the same weights: ours serves the run (adapter
merged), the peers its export/ folder (the same merged model) with `transformers serve --continuous-batching`
("peer") or plain `transformers serve` ("peer-default"); "ours-compiled" is `serve --compile`, healthy only once
its decoding step is compiled. llama.cpp: "ours-llamacpp-<precision>" is `serve --engine llamacpp
--llamacpp-precision <precision>` (our API over a managed llama-server: base GGUF + LoRA adapter applied per request),
"llama-server-<precision>" is llama.cpp's server alone (`llama-server -np <max clients> --jinja`) on the export's GGUF
(`domain-expert export RUN --target gguf --gguf-type <precision>`, the merged model): what a user running llama.cpp
directly gets. llama-server comes from DOMAIN_EXPERT_LLAMA_SERVER, .cache/llama.cpp/build/bin (`make llamacpp`) or
PATH. For each concurrency level N, N clients send streamed chat
completions back to back (greedy, held-out questions from the run's test split) for `--seconds`. It reports
aggregate generated tokens/s (from each response's usage, or its content chunks when a server sends no usage), time
to first token and end-to-end latency p50/p95, and the ratios: N clients vs 1 client, ours vs the peer. Results go
to stdout and a JSON file.

`--load-test` holds N clients on our server only for `--seconds`, counts responses by status (429 is the bounded
queue working as designed, anything else is an error), and samples the server's RSS every second to check that memory
stops growing. The client is a minimal asyncio HTTP/1.1 reader, so the load generator costs little CPU on the same
2-core machine as the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (the server may be a child of a wrapper)."""
    total = 0.0
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


# --- a minimal streaming HTTP client ---------------------------------------------------------------------------


async def post_stream(port: int, path: str, body: dict) -> dict:
    """POST JSON, read the SSE response; returns status, time to first content, end time, completion tokens."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
        + data
    )
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    chunked = False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
            chunked = True
    ttft, tokens, chunks, buf = None, None, 0, b""

    async def body_parts():
        if not chunked:
            while part := await reader.read(65536):
                yield part
            return
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                return
            yield await reader.readexactly(size)
            await reader.readexactly(2)

    async for part in body_parts():
        buf += part
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            if not event.startswith(b"data: ") or event == b"data: [DONE]":
                continue
            msg = json.loads(event[6:])
            for choice in msg.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
            if msg.get("usage"):
                tokens = msg["usage"].get("completion_tokens")
    writer.close()
    return {"status": status, "ttft": ttft, "latency": time.perf_counter() - t0, "tokens": tokens or chunks}


# --- servers ---------------------------------------------------------------------------------------------------


def llama_server() -> str:
    import shutil

    for c in (os.environ.get("DOMAIN_EXPERT_LLAMA_SERVER"), ".cache/llama.cpp/build/bin/llama-server"):
        if c and Path(c).is_file():
            return str(Path(c).resolve())
    found = shutil.which("llama-server")
    if not found:
        raise SystemExit("llama-server not found: `make llamacpp` builds it (or set DOMAIN_EXPERT_LLAMA_SERVER)")
    return found


def gguf_export(run: Path, precision: str) -> Path:
    """The run's merged model as a GGUF of `precision`, made once per precision with our export target."""
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-gguf-{run.resolve().name}-{precision}"
    if not (out / "model.gguf").is_file():
        bin_dir = Path(sys.executable).parent
        cmd = [str(bin_dir / "domain-expert"), "export", str(run), "--target", "gguf", "--gguf-type", precision]
        subprocess.run([*cmd, "--out", str(out), "--overwrite"], check=True)
    return out / "model.gguf"


def start_server(
    kind: str, run: Path, port: int, max_queue: int, max_parallel: int = 16
) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    bin_dir = Path(sys.executable).parent
    if kind.startswith("ours"):
        cmd = [str(bin_dir / "domain-expert"), "serve", str(run), "--port", str(port), "--max-queue", str(max_queue)]
        cmd += ["--decoder", "transformers"] if kind == "ours-transformers-forward" else []
        cmd += ["--compile"] if kind == "ours-compiled" else []
        if kind.startswith("ours-llamacpp-"):
            cmd += ["--engine", "llamacpp", "--llamacpp-precision", kind.removeprefix("ours-llamacpp-")]
        model = run.resolve().name
    elif kind.startswith("llama-server-"):
        gguf = gguf_export(run, kind.removeprefix("llama-server-"))
        cmd = [llama_server(), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "--jinja"]
        # one slot per client of the largest level, each with room for a prompt and its answer
        cmd += ["-np", str(max_parallel), "-c", str(512 * max_parallel), "-t", str(os.cpu_count() or 2)]
        model = "model"
    else:
        export = run / "export"
        # the dtype our server picks on this machine (bf16 where the CPU has native bf16 instructions, else fp32),
        # so that both servers do the same arithmetic
        from domain_expert.hardware import resolve_dtype

        dtype = str(resolve_dtype("auto", "cpu")).removeprefix("torch.")
        cmd = [str(bin_dir / "transformers"), "serve", "--port", str(port), "--device", "cpu", "--dtype", dtype]
        cmd += ["--continuous-batching"] if kind == "peer" else []
        cmd += [str(export)]
        model = str(export)
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-serve-{kind}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            hint = "" if kind.startswith("ours") else " (transformers serve needs `pip install -e '.[bench]'`)"
            raise SystemExit(f"{kind} server exited ({proc.returncode}); see {log.name}{hint}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if b" 200 " in s.recv(100):
                    return proc, model
        except OSError:
            pass
        time.sleep(1)
    proc.kill()
    raise SystemExit(f"{kind} server did not become healthy in 300 s; see {log.name}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


# --- load ------------------------------------------------------------------------------------------------------


async def drive(port: int, model: str, prompts: list[str], clients: int, seconds: float, max_tokens: int) -> dict:
    results: list[dict] = []
    start = time.perf_counter()

    async def client(c: int):
        i = c
        while time.perf_counter() - start < seconds:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            i += clients
            try:
                results.append(await post_stream(port, "/v1/chat/completions", body))
            except (OSError, ValueError, asyncio.IncompleteReadError) as e:
                results.append({"status": f"client error: {type(e).__name__}", "ttft": None, "latency": 0, "tokens": 0})
            if results[-1]["status"] == 429:
                await asyncio.sleep(0.5)  # the server said "busy": back off like a client should

    await asyncio.gather(*(client(c) for c in range(clients)))
    elapsed = time.perf_counter() - start
    ok = [r for r in results if r["status"] == 200]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    lats = [r["latency"] for r in ok]
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    return {
        "clients": clients,
        "requests": len(ok),
        "statuses": statuses,
        "tokens": sum(r["tokens"] for r in ok),
        "seconds": elapsed,
        "tokens_per_s": sum(r["tokens"] for r in ok) / elapsed,
        "ttft_p50": pct(ttfts, 50),
        "ttft_p95": pct(ttfts, 95),
        "latency_p50": pct(lats, 50),
        "latency_p95": pct(lats, 95),
    }


def pct(xs: list[float], q: int) -> float | None:
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1]


def load_prompts(run: Path) -> list[str]:
    rows = [json.loads(x) for x in (run / "data" / "test.jsonl").read_text().splitlines() if x.strip()]
    prompts = [r["prompt"] for r in rows if r.get("task") == "define"] or [r["prompt"] for r in rows]
    if not prompts:
        raise SystemExit(f"no prompts in {run / 'data' / 'test.jsonl'}")
    return prompts


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", default="runs/medical-terms", type=Path)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--seconds", type=float, default=20.0, help="per concurrency level (load test: total)")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument(
        "--servers",
        nargs="+",
        default=["ours", "peer"],
        choices=["ours", "ours-compiled", "ours-transformers-forward", "peer", "peer-default"]
        + [f"{k}-{p}" for k in ("ours-llamacpp", "llama-server") for p in ("f32", "bf16", "q8_0")],
        help="ours-compiled: serve --compile; peer: transformers serve --continuous-batching; peer-default: "
        "transformers serve without it",
    )
    p.add_argument("--max-queue", type=int, default=64, help="our server's --max-queue")
    p.add_argument("--load-test", action="store_true", help="hold max(--clients) clients on our server")
    p.add_argument(
        "--load-warmup",
        type=float,
        default=20.0,
        help="load test: seconds at full concurrency before the measured window (buffers and allocator arenas "
        "grow to working size there; growth after it is what a leak would show)",
    )
    p.add_argument("--out", type=Path, default=Path("bench/results/serve_throughput.json"))
    args = p.parse_args(argv)
    if not (args.run / "data" / "test.jsonl").exists() or not (args.run / "export").exists():
        raise SystemExit(f"{args.run} is not a finished run (needs data/ and export/): run `domain-expert run` first")
    prompts = load_prompts(args.run)
    from domain_expert.hardware import cpu_has_native_bf16, cpu_summary, resolve_dtype

    # machines differ between runs (bf16 instructions or not): the figures are only comparable with these
    out: dict = {
        "run": str(args.run),
        "max_tokens": args.max_tokens,
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "dtype": str(resolve_dtype("auto", "cpu")).removeprefix("torch."),
        "cpu": cpu_summary(),
    }

    if args.load_test:
        n = max(args.clients)
        port = free_port()
        proc, model = start_server("ours", args.run, port, args.max_queue)
        try:
            asyncio.run(drive(port, model, prompts, 1, 2, args.max_tokens))  # warm-up: first call
            rss_before_warmup = rss_mib(proc.pid)
            warm = {"statuses": {}}
            if args.load_warmup > 0:
                warm = asyncio.run(drive(port, model, prompts, n, args.load_warmup, args.max_tokens))
            samples: list[tuple[float, float]] = []

            async def run_with_sampling():
                task = asyncio.create_task(drive(port, model, prompts, n, args.seconds, args.max_tokens))
                t0 = time.perf_counter()
                while not task.done():
                    samples.append((time.perf_counter() - t0, rss_mib(proc.pid)))
                    await asyncio.sleep(1)
                return await task

            res = asyncio.run(run_with_sampling())
        finally:
            stop_server(proc)
        # an error during the warm-up fails the test too: it is the same load
        errors = {
            k: res["statuses"].get(k, 0) + warm["statuses"].get(k, 0)
            for k in {*res["statuses"], *warm["statuses"]}
            if k not in ("200", "429")
        }
        third = max(1, len(samples) // 3)
        mid = max(m for _, m in samples[third : 2 * third] or samples)
        last = max(m for _, m in samples[2 * third :] or samples)
        res.update(
            warmup_s=args.load_warmup,
            warmup_statuses=warm["statuses"],
            rss_before_warmup_mib=rss_before_warmup,
            rss_first_mib=samples[0][1],
            rss_mid_third_max_mib=mid,
            rss_last_third_max_mib=last,
            rss_growth_last_vs_mid_pct=100 * (last - mid) / mid,
            rss_samples_s_mib=[(round(t, 1), round(m, 1)) for t, m in samples],  # to see a step from a leak
            errors=errors,
            passed=not errors and res["requests"] > 0 and last <= mid * 1.05,
        )
        out["load_test"] = res
        print(json.dumps(res, indent=2))
    else:
        for kind in args.servers:
            port = free_port()
            proc, model = start_server(kind, args.run, port, args.max_queue, max(args.clients))
            try:
                asyncio.run(drive(port, model, prompts, 1, 3, args.max_tokens))  # warm-up (first call compiles/loads)
                rows = []
                for c in args.clients:
                    r = drive(port, model, prompts, c, args.seconds, args.max_tokens)
                    rows.append(asyncio.run(r))
                    print(f"{kind:22} {c:3} clients: {rows[-1]['tokens_per_s']:7.1f} tok/s", flush=True)
                out[kind] = rows
            finally:
                stop_server(proc)
        print(
            f"\n{'server':22} {'clients':>7} {'tok/s':>8} {'x1':>6} {'ttft p50':>9} {'p95':>7} "
            f"{'e2e p50':>8} {'p95':>7} {'reqs':>5} statuses"
        )
        for kind in args.servers:
            one = out[kind][0]["tokens_per_s"] if out[kind] and out[kind][0]["clients"] == 1 else None
            for r in out[kind]:
                r["vs_one_client"] = r["tokens_per_s"] / one if one else None
                print(
                    f"{kind:22} {r['clients']:7} {r['tokens_per_s']:8.1f} {fmt(r['vs_one_client'], '.1f'):>6} "
                    f"{fmt(r['ttft_p50']):>9} {fmt(r['ttft_p95']):>7} {fmt(r['latency_p50']):>8} "
                    f"{fmt(r['latency_p95']):>7} {r['requests']:5} {r['statuses']}"
                )
        # every server against ours (the default engine) at each concurrency level
        if "ours" in out:
            out["vs_ours"] = {
                kind: {
                    str(a["clients"]): b["tokens_per_s"] / a["tokens_per_s"] if a["tokens_per_s"] else None
                    for a, b in zip(out["ours"], out[kind], strict=True)
                }
                for kind in args.servers
                if kind != "ours"
            }
            for kind, ratios in out["vs_ours"].items():
                print(f"{kind} / ours tokens/s:", {k: fmt(v, ".2f") for k, v in ratios.items()})
        for ours in ("ours", "ours-compiled"):
            if ours in out and "peer" in out:
                key = "ours_vs_peer" if ours == "ours" else "ours_compiled_vs_peer"
                out[key] = {
                    str(a["clients"]): a["tokens_per_s"] / b["tokens_per_s"] if b["tokens_per_s"] else None
                    for a, b in zip(out[ours], out["peer"], strict=True)
                }
                print(f"{ours} / peer tokens/s:", {k: fmt(v, ".1f") for k, v in out[key].items()})
    from domain_expert.fsutil import write_json_atomic
    from domain_expert.provenance import stamp

    write_json_atomic(args.out, {"stamp": stamp(None if argv is None else [__file__, *argv]), **out})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
