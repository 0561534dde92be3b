"""`llmd tls self-signed`: a self-signed certificate and its key for a first install, made by the
`openssl` command.

The openssl command, not the `cryptography` package: Python's ssl module loads a pair but cannot
make one, and llmd makes one once, at install time. The command is on every Debian system that
keeps its Recommends (the .deb's `Recommends: openssl`) and was tried against every client in
the tests; the package would be a compiled dependency (about 4 MB with cffi) in every install,
updated for its own security fixes, for one rarely run command. Serving needs neither.

The pair: an EC P-256 key (fast handshakes, every TLS 1.2+ client), a certificate naming every
--host in its subjectAltName (clients check that, not the CN), marked as a server certificate
that is no CA (browsers refuse a CA certificate used by a server). The key is written 0600.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

_DNS = re.compile(
    r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"


class SelfSignedError(Exception):
    """Why no pair was written, in one line for the operator."""


def add_parser(sub: Any) -> None:
    tls = sub.add_parser("tls", help="certificates for HTTPS (server.tls_cert and tls_key)")
    tsub = tls.add_subparsers(dest="tls_command", required=True)
    made = tsub.add_parser(
        "self-signed",
        help="write a self-signed certificate and key for a first install",
        description=f"Write OUT/{CERT_FILE} (the certificate; give it to clients to trust) and "
        f"OUT/{KEY_FILE} (the private key, mode 0600) with the openssl command. Then set "
        "server.tls_cert and server.tls_key to them. For a certificate from your own CA or "
        "Let's Encrypt, point those settings at its files instead.",
    )
    made.add_argument(
        "--host",
        action="append",
        required=True,
        metavar="NAME",
        help="a DNS name or IP address clients use to reach llmd; repeat for each "
        "(e.g. --host llm.office.lan --host 192.168.1.20 --host localhost)",
    )
    made.add_argument(
        "--out", type=Path, default=Path("."), help="folder for the two files (default: here)"
    )
    made.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    made.add_argument("--force", action="store_true", help="replace existing files")


def subject_alt_names(hosts: list[str]) -> str:
    """The subjectAltName value naming `hosts` (`DNS:a,IP:192.0.2.1`); ValueError for a name
    that is neither a DNS name nor an IP address."""
    names = []
    for host in hosts:
        try:
            names.append(f"IP:{ipaddress.ip_address(host.strip('[]'))}")
            continue
        except ValueError:
            pass
        if len(host) > 253 or not _DNS.fullmatch(host):
            raise ValueError(f"--host {host!r}: not a DNS name or an IP address")
        names.append(f"DNS:{host.lower()}")
    return ",".join(dict.fromkeys(names))  # in order, each once


def self_signed(hosts: list[str], out: Path, days: int, force: bool = False) -> tuple[Path, Path]:
    """Write OUT/cert.pem and OUT/key.pem (0600) for `hosts`; their paths. Raises
    SelfSignedError (openssl missing or failing, files in the way) or ValueError (a bad host)."""
    san = subject_alt_names(hosts)
    if days < 1:
        raise ValueError(f"--days {days}: must be at least 1")
    cert, key = out / CERT_FILE, out / KEY_FILE
    if not force and (existing := [p for p in (cert, key) if p.exists()]):
        raise SelfSignedError(f"{existing[0]} exists; --force replaces it")
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SelfSignedError("the openssl command is not installed (apt install openssl)")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    common_name = hosts[0] if len(hosts[0]) <= 64 else "llmd"
    # Written next to the result (a 0700 folder: the key is never readable by others) and moved
    # into place once both files are whole.
    with tempfile.TemporaryDirectory(dir=out, prefix=".llmd-tls-") as tmp:
        conf = Path(tmp) / "req.cnf"
        conf.write_text(
            "[req]\ndistinguished_name = dn\nx509_extensions = v3\nprompt = no\n"
            f"[dn]\nCN = {common_name}\n"
            "[v3]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n"
            f"extendedKeyUsage = serverAuth\nsubjectAltName = {san}\n"
            "subjectKeyIdentifier = hash\n"
        )
        new_cert, new_key = Path(tmp) / CERT_FILE, Path(tmp) / KEY_FILE
        argv = [
            openssl, "req", "-x509", "-config", str(conf), "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-sha256", "-days", str(days),
            "-keyout", str(new_key), "-out", str(new_cert),
        ]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SelfSignedError(f"openssl failed: {done.stderr.strip()[-500:]}")
        new_key.chmod(0o600)
        new_cert.chmod(0o644)
        os.replace(new_key, key)
        os.replace(new_cert, cert)
    return cert, key


def run(args: argparse.Namespace) -> int:
    try:
        cert, key = self_signed(args.host, args.out, args.days, args.force)
    except ValueError as exc:
        print(f"llmd: {exc}", file=sys.stderr)
        return 2
    except (SelfSignedError, OSError) as exc:
        print(f"llmd: no certificate written: {exc}", file=sys.stderr)
        return 1
    cert, key = cert.absolute(), key.absolute()
    print(
        f"wrote {cert} (self-signed certificate for {', '.join(args.host)}, "
        f"{args.days} days)\nwrote {key} (its private key, mode 0600)\n\n"
        f'in llmd.toml:\n  [server]\n  tls_cert = "{cert}"\n  tls_key = "{key}"\n'
        "then restart llmd (turning HTTPS on needs a restart; a new pair later only a reload).\n"
        f"Clients trust {cert.name} (copy it to them; it holds no secret), e.g. "
        f"curl --cacert {cert} https://HOST:PORT/health"
    )
    return 0
