"""TLS on the listener: the server context built from a PEM pair (`server.tls_cert` and
`server.tls_key`), the reasons a pair cannot be used, and rotation to a new pair on SIGHUP
without dropping a connection.

The context: TLS 1.2 and 1.3 only, Python's default server ciphers (ECDHE with AES-GCM or
ChaCha20, no RC4, 3DES, SHA-1 MACs or plain RSA key exchange), no compression (CRIME), HTTP/1.1
offered by ALPN. `llmd tls self-signed` (llmd/cli/tls.py) writes a pair for a first install.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from llmd.explain import find_line
from llmd.settings import Settings
from llmd.settings_file import ConfigError

_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")


class TLSError(Exception):
    """A pair that cannot be served: `setting` ("tls_cert" or "tls_key") is the one to fix."""

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(reason)
        self.setting = setting
        self.reason = reason


@dataclass(frozen=True)
class Pair:
    """A certificate and its key loaded into a server context of their own."""

    cert: Path
    context: ssl.SSLContext
    fingerprint: str
    """SHA-256 of the certificate as `openssl x509 -noout -fingerprint -sha256` prints it: the
    log shows it to tell which certificate is served."""

    def __str__(self) -> str:
        return f"{self.cert} (SHA-256 {self.fingerprint})"


def load_pair(cert: Path, key: Path) -> Pair:
    """A server context serving `cert` with `key`; TLSError says why the pair cannot be used
    (a file missing or unreadable, not PEM, an encrypted key, a key of another certificate)."""
    cert_pem = _read("tls_cert", cert)
    key_pem = _read("tls_key", key)
    first_cert = _CERT.search(cert_pem)
    if first_cert is None:
        raise TLSError("tls_cert", f"{cert}: no PEM certificate in it (BEGIN CERTIFICATE)")
    if not _KEY.search(key_pem):
        raise TLSError("tls_key", f"{key}: no PEM private key in it (BEGIN PRIVATE KEY)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(["http/1.1"])

    def no_passphrase() -> NoReturn:
        # Without a callback OpenSSL would ask for the passphrase on the terminal, and a
        # daemon has none: say so instead.
        raise TLSError(
            "tls_key",
            f"{key}: the key is encrypted; llmd needs it unencrypted "
            f"(openssl pkey -in {key.name} -out plain.pem), readable by its user only",
        )

    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except ssl.SSLError as exc:
        # A key of the same type as the certificate's but another one, or of another type.
        if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            raise TLSError("tls_key", f"{key}: not the private key of {cert}") from None
        raise TLSError("tls_cert", f"{cert}, {key}: cannot be used: {exc.reason or exc}") from None
    der = ssl.PEM_cert_to_DER_cert(first_cert.group().decode("ascii"))
    digest = hashlib.sha256(der).hexdigest().upper()
    return Pair(cert, context, ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)))


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSError(setting, f"{path}: cannot read: {exc.strerror or exc}") from None


def configured_pair(settings: Settings, config: Path | None) -> Pair | None:
    """The settings' pair, None for plain HTTP. A pair that cannot be used raises ConfigError
    as a bad setting does: `file:line: server.tls_key: reason`."""
    cert, key = settings.server.tls_cert, settings.server.tls_key
    if cert is None or key is None:
        return None
    try:
        return load_pair(cert, key)
    except TLSError as exc:
        where = "settings"
        if config is not None:
            where = str(config)
            try:
                line = find_line(config.read_text(encoding="utf-8"), ["server", exc.setting])
            except (OSError, UnicodeDecodeError):
                line = None
            where += f":{line}" if line else ""
        raise ConfigError(f"{where}: server.{exc.setting}: {exc.reason}") from None


def pinned_client_context(cert: Path) -> ssl.SSLContext:
    """A client context trusting exactly the certificate in `cert`, whatever names it carries:
    how `llmd models ...` reaches its own daemon on 127.0.0.1 with a certificate made out to the
    names clients use (the chain is cut at that certificate, so a CA-issued one works too)."""
    context = ssl.create_default_context(cafile=cert)
    context.check_hostname = False  # pinned: the certificate itself is what is checked
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


class RotatingContext:
    """The listener's context (`listening`); each new handshake takes the pair given to `use`
    last (`serving`).

    Not `load_cert_chain` again into the one context, as measured with OpenSSL 3.0: a context
    holds one certificate per key type, so after an EC to RSA rotation the old EC certificate
    was still served to clients that prefer ECDSA; and a load that fails half-way (a key that
    does not match) leaves the context changed. So each pair gets a context of its own, built
    and checked whole before it is used, and the listening context's SNI callback (called on
    every handshake, with a server name or without) moves each new connection onto the newest
    one. A connection keeps the context it was made with: rotation drops none.
    """

    def __init__(self, first: Pair) -> None:
        self.listening = first.context
        self.serving = first
        first.context.sni_callback = self._pick

    def use(self, pair: Pair) -> None:
        """Serve `pair` from the next handshake on."""
        self.serving = pair

    def _pick(self, conn: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        if self.serving.context is not context:
            conn.context = self.serving.context
