"""TLS (llmd/tls.py, llmd/cli/tls.py): the settings, the self-signed pair, the server context
(TLS 1.2+, no compression), the reasons a pair is refused, rotation without dropping a
connection, and `llmd check-config` on a pair. Real handshakes on loopback, no daemon."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from llmd.cli import main
from llmd.cli.tls import SelfSignedError, self_signed, subject_alt_names
from llmd.settings_file import ConfigError, load_settings
from llmd.tls import (
    RotatingContext,
    TLSError,
    configured_pair,
    load_pair,
    pinned_client_context,
)

Pairs = dict[str, tuple[Path, Path]]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Pairs:
    """Two EC pairs ("a", "b") as `llmd tls self-signed` writes them, an RSA pair, and a copy
    of a's key encrypted with a passphrase."""
    tmp = tmp_path_factory.mktemp("pairs")
    made = {name: self_signed(["localhost", "127.0.0.1"], tmp / name, 2) for name in "ab"}
    rsa = tmp / "rsa"
    rsa.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(rsa / "key.pem"), "-out", str(rsa / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    made["rsa"] = (rsa / "cert.pem", rsa / "key.pem")
    encrypted = tmp / "encrypted.pem"
    subprocess.run(
        ["openssl", "pkey", "-in", str(made["a"][1]), "-aes256", "-passout", "pass:secret",
         "-out", str(encrypted)],
        check=True, capture_output=True,
    )  # fmt: skip
    made["encrypted"] = (made["a"][0], encrypted)
    return made


def _trusting(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    # As Python 3.13's default context checks: the self-signed pair must pass there too.
    context.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def _der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


@asynccontextmanager
async def _echo_server(context: ssl.SSLContext) -> AsyncIterator[int]:
    """A TLS line-echo server on loopback with `context`; its port."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def _connect(
    port: int, client: ssl.SSLContext, host: str = "localhost"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port, ssl=client, server_hostname=host)


async def _served(port: int) -> bytes:
    """The certificate a new connection is shown (DER), not verified."""
    pem = await asyncio.to_thread(ssl.get_server_certificate, ("127.0.0.1", port))
    return ssl.PEM_cert_to_DER_cert(pem)


async def _echoes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"ping\n")
    await writer.drain()
    return await reader.readline() == b"ping\n"


# -- settings ------------------------------------------------------------------------------


def test_the_pair_is_both_or_neither_and_relative_to_the_config(tmp_path: Path) -> None:
    path = tmp_path / "llmd.toml"
    path.write_text('[server]\nport = 8443\ntls_cert = "tls/cert.pem"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert f"{path}:1: server: tls_cert and tls_key go together" in str(err.value)
    path.write_text('[server]\ntls_cert = "tls/cert.pem"\ntls_key = "/etc/llmd/key.pem"\n')
    server = load_settings(path).server
    assert server.tls_cert == tmp_path / "tls" / "cert.pem"
    assert server.tls_key == Path("/etc/llmd/key.pem")
    assert load_settings(None).server.tls_cert is None  # plain HTTP unless asked


def test_a_bad_pair_names_the_file_line_and_setting(tmp_path: Path, pairs: Pairs) -> None:
    path = tmp_path / "llmd.toml"
    path.write_text(
        f'[server]\nport = 8443\ntls_cert = "{pairs["a"][0]}"\ntls_key = "{pairs["b"][1]}"\n'
    )
    with pytest.raises(ConfigError) as err:
        configured_pair(load_settings(path), path)
    assert str(err.value) == (
        f"{path}:4: server.tls_key: {pairs['b'][1]}: not the private key of {pairs['a'][0]}"
    )


# -- the self-signed pair ------------------------------------------------------------------


def test_self_signed_names_every_host_and_keeps_the_key_private(
    tmp_path: Path, pairs: Pairs
) -> None:
    cert, key = pairs["a"]
    assert key.stat().st_mode & 0o777 == 0o600
    assert cert.stat().st_mode & 0o777 == 0o644

    async def check() -> None:
        async with _echo_server(load_pair(cert, key).context) as port:
            for host in ("localhost", "127.0.0.1"):  # a DNS name and an IP address
                reader, writer = await _connect(port, _trusting(cert), host)
                assert await _echoes(reader, writer)
                writer.close()

    asyncio.run(check())
    with pytest.raises(SelfSignedError, match="exists; --force replaces it"):
        self_signed(["localhost"], cert.parent, 1)
    assert subject_alt_names(["llm.lan", "192.0.2.7", "[::1]", "LLM.lan"]) == (
        "DNS:llm.lan,IP:192.0.2.7,IP:::1"
    )
    for bad in ("two words", "a/b", "-x.lan", "x" * 300):
        with pytest.raises(ValueError, match="not a DNS name or an IP address"):
            subject_alt_names([bad])


def test_the_cli_writes_a_pair_and_refuses_a_bad_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new"
    assert main(["tls", "self-signed", "--host", "llm.lan", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f'tls_cert = "{out / "cert.pem"}"' in printed
    assert load_pair(out / "cert.pem", out / "key.pem").fingerprint in (
        _openssl_fingerprint(out / "cert.pem")
    )
    assert out.stat().st_mode & 0o777 == 0o700
    assert main(["tls", "self-signed", "--host", "no good", "--out", str(tmp_path)]) == 2
    assert "not a DNS name or an IP address" in capsys.readouterr().err


def _openssl_fingerprint(cert: Path) -> str:
    done = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(cert)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout


# -- the context ---------------------------------------------------------------------------


def test_the_context_speaks_tls_1_2_and_up_with_forward_secret_aead_ciphers(
    pairs: Pairs,
) -> None:
    cert, key = pairs["a"]
    context = load_pair(cert, key).context
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION

    def old_client(maximum: ssl.TLSVersion) -> ssl.SSLContext:
        client = _trusting(cert)
        client.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        client.maximum_version = maximum
        client.set_ciphers("ALL:@SECLEVEL=0")  # the client would, the server must not
        return client

    async def check() -> None:
        async with _echo_server(context) as port:
            _, writer = await _connect(port, old_client(ssl.TLSVersion.TLSv1_2))
            name, version, _bits = writer.get_extra_info("cipher")
            assert version == "TLSv1.2" and name.startswith("ECDHE-") and "GCM" in name
            writer.close()
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await _connect(port, old_client(ssl.TLSVersion.TLSv1_1))
        # The same TLS 1.1 client does connect to a server that allows it: the refusal above
        # is the context's doing.
        lax = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        lax.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        lax.set_ciphers("ALL:@SECLEVEL=0")
        lax.load_cert_chain(cert, key)
        async with _echo_server(lax) as port:
            _, writer = await _connect(port, old_client(ssl.TLSVersion.TLSv1_1))
            assert writer.get_extra_info("ssl_object").version() == "TLSv1.1"
            writer.close()

    with pytest.warns(DeprecationWarning):  # Python deprecates TLS 1.1: it is what we test
        asyncio.run(check())


@pytest.mark.parametrize(
    ("make", "setting", "reason"),
    [
        (lambda p, t: (t / "none.pem", p["a"][1]), "tls_cert", "cannot read: No such file"),
        (lambda p, t: (p["a"][0], t / "none.pem"), "tls_key", "cannot read: No such file"),
        (lambda p, t: (p["a"][0], t), "tls_key", "cannot read: Is a directory"),
        (lambda p, t: (p["a"][1], p["a"][1]), "tls_cert", "no PEM certificate in it"),
        (lambda p, t: (p["a"][0], p["a"][0]), "tls_key", "no PEM private key in it"),
        (lambda p, t: (p["a"][0], p["b"][1]), "tls_key", "not the private key of"),
        (lambda p, t: (p["a"][0], p["rsa"][1]), "tls_key", "not the private key of"),
        (lambda p, t: p["encrypted"], "tls_key", "the key is encrypted; llmd needs it"),
    ],
    ids=["no cert", "no key", "unreadable key", "key as cert", "cert as key", "other key",
         "key of another type", "encrypted key"],
)  # fmt: skip
def test_a_pair_that_cannot_be_served_says_which_file_and_why(
    tmp_path: Path,
    pairs: Pairs,
    make: Callable[[Pairs, Path], tuple[Path, Path]],
    setting: str,
    reason: str,
) -> None:
    cert, key = make(pairs, tmp_path)
    with pytest.raises(TLSError) as err:
        load_pair(cert, key)
    assert err.value.setting == setting
    assert reason in err.value.reason


# -- rotation ------------------------------------------------------------------------------


@pytest.mark.parametrize("new", ["b", "rsa"])
def test_rotation_serves_the_new_pair_to_new_connections_and_keeps_open_ones(
    pairs: Pairs, new: str
) -> None:
    """Also from an EC pair to an RSA one: loading it into the same context kept serving the
    old EC certificate to clients that prefer ECDSA (RotatingContext's docstring)."""
    old_cert, old_key = pairs["a"]
    new_cert, new_key = pairs[new]
    rotating = RotatingContext(load_pair(old_cert, old_key))

    async def check() -> None:
        async with _echo_server(rotating.listening) as port:
            assert await _served(port) == _der(old_cert)
            reader, writer = await _connect(port, _trusting(old_cert))
            assert await _echoes(reader, writer)
            rotating.use(load_pair(new_cert, new_key))
            assert await _served(port) == _der(new_cert)
            fresh_reader, fresh_writer = await _connect(port, _trusting(new_cert))
            assert await _echoes(fresh_reader, fresh_writer)
            assert await _echoes(reader, writer)  # the connection made before goes on
            writer.close()
            fresh_writer.close()
            with pytest.raises(ssl.SSLCertVerificationError):
                await _connect(port, _trusting(old_cert))

    asyncio.run(check())


def test_the_cli_trusts_its_own_daemon_by_the_certificate_whatever_name_it_carries(
    tmp_path: Path,
) -> None:
    """`llmd models ...` dials 127.0.0.1 with a certificate made out to the office name."""
    cert, key = self_signed(["llm.office.lan"], tmp_path / "office", 2)

    async def check() -> None:
        async with _echo_server(load_pair(cert, key).context) as port:
            with pytest.raises(ssl.SSLCertVerificationError):  # by name: not 127.0.0.1
                await _connect(port, _trusting(cert), "127.0.0.1")
            reader, writer = await _connect(port, pinned_client_context(cert), "127.0.0.1")
            assert await _echoes(reader, writer)
            writer.close()
        other, other_key = self_signed(["llm.office.lan"], tmp_path / "other", 2)
        async with _echo_server(load_pair(other, other_key).context) as port:
            with pytest.raises(ssl.SSLCertVerificationError):  # pinned: another one is refused
                await _connect(port, pinned_client_context(cert), "127.0.0.1")

    asyncio.run(check())


# -- check-config --------------------------------------------------------------------------


def test_check_config_loads_the_pair(
    tmp_path: Path, pairs: Pairs, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "llmd.toml"
    cert, key = pairs["a"]
    path.write_text(
        f'models_dir = "{tmp_path}"\n[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    )
    assert main(["check-config", "--config", str(path)]) == 0
    assert f"TLS: {cert} (SHA-256 " in capsys.readouterr().out
    path.write_text(
        f'models_dir = "{tmp_path}"\n[server]\ntls_cert = "{cert}"\ntls_key = "{cert}"\n'
    )
    assert main(["check-config", "--config", str(path)]) == 2
    assert f"llmd: invalid configuration: {path}:4: server.tls_key: {cert}: no PEM" in (
        capsys.readouterr().err
    )
