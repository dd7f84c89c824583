"""A deployment's shared secrets: the auth token and a small PKI, made with the openssl CLI.

`make_secrets(out)` writes `token` (random, 32 bytes urlsafe), `ca.pem`/`ca.key` and one
service certificate `svc.pem`/`svc.key` valid for the given host names (default: the
docker-compose service names and the loopback address), usable as server and client
certificate, so one file pair serves TLS and mTLS on every link. `rogue=True` adds a
certificate from an unrelated CA (`rogue.pem`/`rogue.key`), for tests.
"""
from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

DEFAULT_NAMES = ("localhost", "store", "worker", "scheduler")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "825", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)


def _leaf(d: Path, ca: str, name: str, hosts: tuple[str, ...]) -> None:
    san = ",".join(["IP:127.0.0.1", *(f"DNS:{h}" for h in hosts)])
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "825", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)
    (d / f"{name}.csr").unlink()
    (d / f"{name}.ext").unlink()


def make_secrets(out: Path | str, hosts: tuple[str, ...] = DEFAULT_NAMES, rogue: bool = False
                 ) -> dict[str, Path]:
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    token = d / "token"
    if not token.exists():
        token.write_text(secrets.token_urlsafe(32) + "\n")
    _ca(d, "ca")
    _leaf(d, "ca", "svc", hosts)
    paths = {"token": token, "ca": d / "ca.pem", "cert": d / "svc.pem", "key": d / "svc.key"}
    if rogue:
        _ca(d, "rogue-ca")
        _leaf(d, "rogue-ca", "rogue", hosts)
        paths.update(rogue_cert=d / "rogue.pem", rogue_key=d / "rogue.key")
    for p in d.iterdir():
        if p.suffix == ".key" or p.name == "token":
            os.chmod(p, 0o600)
    return paths
