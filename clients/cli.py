"""The `chameleon` command."""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

DEFAULT_ADDRESS = os.environ.get("CHAMELEON_ADDRESS", "127.0.0.1:50051")
DEFAULT_STORE = os.environ.get("CHAMELEON_STORE_ADDRESS", "127.0.0.1:50061")


def _generate(a: argparse.Namespace) -> int:
    from clients.client import ChameleonClient, ChameleonError

    async def go() -> int:
        async with ChameleonClient(a.address) as c:
            try:
                async for chunk in c.generate(a.prompt, adapter=a.adapter, max_tokens=a.max_tokens,
                                              temperature=a.temperature, top_p=a.top_p, seed=a.seed,
                                              stop=a.stop, min_tokens=a.min_tokens,
                                              ignore_eos=a.ignore_eos, timeout=a.timeout):
                    print(chunk.text, end="", flush=True)
                    if chunk.finish_reason:
                        t = chunk.timings
                        print(f"\n[{chunk.finish_reason}; {chunk.completion_tokens} tokens; "
                              f"TTFT {t.get('ttft_ms', 0):.0f} ms = queue {t.get('queue_ms', 0):.0f} + "
                              f"adapter load {t.get('adapter_load_ms', 0):.0f} + prefill "
                              f"{t.get('prefill_ms', 0):.0f} ms]", file=sys.stderr)
            except ChameleonError as e:
                print(f"\nerror: {e}", file=sys.stderr)
                return 2
        return 0

    return asyncio.run(go())


def _adapters(a: argparse.Namespace) -> int:
    from clients.client import ChameleonClient

    async def go() -> None:
        async with ChameleonClient(a.address) as c:
            for ad in await c.list_adapters():
                state = "ok" if ad.valid else f"INVALID: {ad.invalid_reason}"
                print(f"{ad.adapter_id:<32} r={ad.rank:<4} {ad.size_bytes / 1e6:8.1f} MB  "
                      f"{','.join(ad.target_modules):<40} {state}")

    asyncio.run(go())
    return 0


def _registry(a: argparse.Namespace) -> int:
    """`chameleon adapters push|list|show|delete`, talking to the adapter store itself."""
    from clients.store_client import StoreClient, StoreError, describe

    admin = a.admin_token_file.read_text().strip() if getattr(a, "admin_token_file", None) else None
    auth = a.auth_token_file.read_text().strip() if getattr(a, "auth_token_file", None) else None

    async def go() -> int:
        async with StoreClient(a.store, admin_token=admin, auth_token=auth, tls_ca=a.tls_ca,
                               tls_cert=a.tls_cert, tls_key=a.tls_key) as c:
            try:
                if a.adapters_cmd == "push":
                    info = await c.push(a.dir, a.name)
                    print(f"pushed {info.adapter_id} (digest {info.sha256[:16]}, "
                          f"{info.size_bytes / 1e6:.1f} MB)")
                elif a.adapters_cmd == "list":
                    for ad in await c.list():
                        print(describe(ad))
                elif a.adapters_cmd == "show":
                    info = await c.show(a.ref)
                    print(describe(info))
                    print(f"  name {info.name}  version {info.version or '(plain folder)'}  "
                          f"versions {list(info.versions)}  digest {info.sha256}")
                    for f in info.files:
                        print(f"  {f.name:<28} {f.size_bytes:>12} bytes  sha256 {f.sha256}")
                else:
                    for ref in await c.delete(a.ref):
                        print(f"deleted {ref}")
            except StoreError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            except FileNotFoundError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        return 0

    return asyncio.run(go())


def _status(a: argparse.Namespace) -> int:
    from clients.client import ChameleonClient

    async def go() -> None:
        async with ChameleonClient(a.address) as c:
            s = await c.status()
        print(f"policy {s.policy}: {s.queued} queued, {s.running} running, {s.completed} completed")
        for w in s.workers:
            print(f"  {w.worker_id} ({w.address}) {'up' if w.connected else 'DOWN'}: {w.running} running, "
                  f"{w.free_tokens}/{w.total_tokens} KV tokens free, {len(w.cached_adapters)} adapters cached, "
                  f"hits {w.cache_hits} misses {w.cache_misses} evictions {w.evictions}")
            if w.adapter_fetches:
                print(f"    {w.adapter_fetches} adapters fetched from the store; the last at "
                      f"{w.fetch_bytes_per_s / 1e6:.1f} MB/s, first byte after {w.fetch_ttfb_ms:.1f} ms")
            print(f"    pool pages: {w.kv_pages} KV, {w.active_adapter_pages} adapters in use, "
                  f"{w.evictable_pages} idle adapters, {w.free_pages} free")
        for q in s.queues:
            bound = f"WRS < {q.upper_wrs:.3g}" if q.HasField("upper_wrs") else "the rest"
            print(f"  queue {q.index} ({bound}): {q.length} waiting, quota {q.quota_tokens} tokens, "
                  f"{q.held_tokens} held")
        if s.requests_by_status:
            print("  requests: " + ", ".join(f"{k} {v}" for k, v in sorted(s.requests_by_status.items())))
        for k in sorted(s.metrics):
            print(f"  {k} = {s.metrics[k]:g}")

    asyncio.run(go())
    return 0


def _prepare(a: argparse.Namespace) -> int:
    from clients.assets.demo import prepare_demo

    out = prepare_demo(a.assets, force=a.force, progress=lambda m: print(m, flush=True))
    for k, v in out.items():
        print(f"{k}: {v}")
    if a.s3_bucket:
        from clients.assets.upload import upload_to_s3

        names = upload_to_s3(Path(out["adapters"]), a.s3_bucket, a.s3_endpoint,
                             progress=lambda m: print(m, flush=True))
        print(f"uploaded {len(names)} adapters to s3://{a.s3_bucket} ({a.s3_endpoint or 'AWS'})")
    return 0


def _serve(a: argparse.Namespace, rest: list[str]) -> int:
    if a.service == "store":
        from adapter_store.main import main
    elif a.service == "scheduler":
        from scheduler_svc.main import main
    else:
        from gpu_worker.main import main
    main(rest)
    return 0


def _registry_parsers(p: argparse.ArgumentParser) -> None:
    asub = p.add_subparsers(dest="adapters_cmd")
    for cmd, help_ in (("push", "validate and store a new version of an adapter folder"),
                       ("list", "every adapter in the store (latest versions)"),
                       ("show", "one adapter: NAME (latest) or NAME@VERSION"),
                       ("delete", "delete NAME@VERSION, or every version of NAME")):
        q = asub.add_parser(cmd, help=help_)
        if cmd == "push":
            q.add_argument("dir", type=Path, help="folder with adapter_config.json and "
                                                  "adapter_model.safetensors")
            q.add_argument("--name", required=True)
        elif cmd in ("show", "delete"):
            q.add_argument("ref")
        q.add_argument("--store", default=DEFAULT_STORE,
                       help="adapter store address (default $CHAMELEON_STORE_ADDRESS or "
                            "127.0.0.1:50061)")
        if cmd in ("push", "delete"):
            q.add_argument("--admin-token-file", type=Path,
                           help="the store's admin token (needed when it runs with one)")
        q.add_argument("--auth-token-file", type=Path, help="the deployment token, if any")
        q.add_argument("--tls-ca", type=Path, help="TLS: the CA of the store's certificate")
        q.add_argument("--tls-cert", type=Path, help="mutual TLS: this client's certificate")
        q.add_argument("--tls-key", type=Path, help="mutual TLS: its private key")
        q.set_defaults(func=_registry)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="chameleon", description="Many-adapter LLM serving (Chameleon).")
    sub = ap.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="stream a completion")
    g.add_argument("prompt")
    g.add_argument("--adapter", default=None)
    g.add_argument("--max-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=[])
    g.add_argument("--min-tokens", type=int, default=0,
                   help="EOS and stop strings cannot end the completion before this many tokens")
    g.add_argument("--ignore-eos", action="store_true",
                   help="generate past end-of-sequence tokens, up to --max-tokens")
    g.add_argument("--timeout", type=float, default=None)
    g.add_argument("--address", default=DEFAULT_ADDRESS)
    g.set_defaults(func=_generate)

    for name, fn, help_ in (("adapters", _adapters, "list adapters (through the scheduler), or "
                                                    "push/list/show/delete them in the store"),
                            ("status", _status, "scheduler, worker and cache state")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--address", default=DEFAULT_ADDRESS)
        p.set_defaults(func=fn)
        if name == "adapters":
            _registry_parsers(p)

    s = sub.add_parser("serve", help="run one service (pass its options after the name)")
    s.add_argument("service", choices=["store", "scheduler", "worker"])
    s.set_defaults(func=None)

    p = sub.add_parser("prepare-secrets",
                       help="write a deployment token and a CA + service certificate (openssl)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--host", action="append", default=[],
                   help="host name the certificate is valid for (repeat; default: localhost, "
                        "store, worker, scheduler)")
    p.set_defaults(func=_prepare_secrets)

    p = sub.add_parser("prepare-demo", help="build the demo model and adapters (offline)")
    p.add_argument("--assets", type=Path, default=Path(".assets"))
    p.add_argument("--force", action="store_true")
    p.add_argument("--s3-bucket", help="also upload the demo adapters to this S3 bucket "
                                       "(credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
    p.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (e.g. http://s3:8333)")
    p.set_defaults(func=_prepare)

    from clients import demo
    d = sub.add_parser("demo", help="run the whole system locally and measure it")
    demo.add_arguments(d)
    d.set_defaults(func=demo.run)

    from clients import profile
    pr = sub.add_parser("profile", help="measure a device profile (sim/profiles schema) on this "
                                         "machine's GPU or CPU")
    profile.add_arguments(pr)
    pr.set_defaults(func=profile.run)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    for name in ("cache", "sched", "kernels", "store", "paper", "engine", "live", "tracing",
                 "relay"):
        try:
            mod = __import__(f"clients.bench.{name}", fromlist=["run"])
        except ImportError:
            continue
        bp = bsub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else None)
        mod.add_arguments(bp)
        bp.set_defaults(func=mod.run)
    return ap


def _prepare_secrets(a) -> int:
    from clients.assets.pki import DEFAULT_NAMES, make_secrets

    for k, v in make_secrets(a.out, tuple(a.host) or DEFAULT_NAMES).items():
        print(f"{k}: {v}")
    return 0


def _light_parser(cmd: str) -> argparse.ArgumentParser | None:
    """`adapters` and `status` without building the full parser, whose bench and demo entries
    import torch (seconds of start-up for a registry call)."""
    if cmd not in ("adapters", "status"):
        return None
    ap = argparse.ArgumentParser(prog="chameleon")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser(cmd)
    p.add_argument("--address", default=DEFAULT_ADDRESS)
    p.set_defaults(func=_adapters if cmd == "adapters" else _status)
    if cmd == "adapters":
        _registry_parsers(p)
    return ap


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = (_light_parser(argv[0]) if argv and "-h" not in argv[:1] else None) or build_parser()
    if argv[:1] == ["serve"]:
        a, rest = ap.parse_known_args(argv)
        sys.exit(_serve(a, rest))
    a = ap.parse_args(argv)
    sys.exit(a.func(a))


if __name__ == "__main__":
    main()
