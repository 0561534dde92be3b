"""HTTPS through the real daemon: a pair made by `llmd tls self-signed`, the official `openai`
client trusting it (chat and streaming), refused without it, plain HTTP refused on the TLS
port, a bad pair refused at start, and SIGHUP rotating the pair (new connections see the new
certificate, a stream open across the reload finishes) or refusing a broken one.

Two daemons: `served` for what does not change the pair, and one of its own for rotation.
"""

from __future__ import annotations

import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.conftest import SMOL, Daemon, start_daemon

TLS_CONFIG = f"""
[server]
default_model = "smollm2"
tls_cert = "tls/cert.pem"
tls_key = "tls/key.pem"

[engine]
ctx_per_seq = 2048
parallel = 2

[models.smollm2]
path = "{SMOL}"
"""
LONG = 400
"""Output tokens of the stream kept open across a reload (ignore_eos): it is still generating
when the new certificate is in use (the test checks that it is)."""


def _llmd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmd", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def _self_signed(out: Path) -> tuple[Path, Path]:
    """A pair for 127.0.0.1 as an operator makes it: `llmd tls self-signed`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    made = _llmd("tls", "self-signed", "--host", "127.0.0.1", "--out", str(out), cwd=out.parent)
    assert made.returncode == 0, made.stderr
    return out / "cert.pem", out / "key.pem"


def _served_cert(d: Daemon) -> bytes:
    """The certificate a new connection is shown (DER), whoever issued it."""
    return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", d.port)))


def _der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


def _trusting(d: Daemon, cert: Path) -> openai.OpenAI:
    http = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=cert))
    return openai.OpenAI(base_url=d.url + "/v1", api_key="unused", max_retries=0, http_client=http)


def _chat(client: openai.OpenAI) -> str:
    """One short answer on a new connection; the client is closed after it (a client given
    its own http_client is not closed when collected: its TLS socket would be left open)."""
    with client:
        answer = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
        )
    return answer.choices[0].message.content or ""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    work = tmp_path_factory.mktemp("tls")
    cert, _ = _self_signed(work / "tls")
    d = start_daemon(work, TLS_CONFIG, ca=cert)
    yield d
    assert d.stop() == 0, d.logs()


def test_the_openai_client_trusting_the_certificate_chats_and_streams(served: Daemon) -> None:
    assert served.url.startswith("https://")
    # served.client(): openai.OpenAI(http_client=openai.DefaultHttpxClient(verify=<an SSL
    # context trusting the certificate>)), as docs/operations.md shows.
    with served.client() as client:
        answer = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
        )
        chunks = list(
            client.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": "Count to five."}],
                max_tokens=16,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert answer.choices[0].message.content and answer.usage and answer.usage.total_tokens > 0
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    logs = served.logs()
    assert f"listening on https://127.0.0.1:{served.port}" in logs
    assert "TLS: serving " in logs and "(SHA-256 " in logs
    assert "clear text" not in logs  # loopback: no warning


def test_a_client_that_does_not_trust_the_certificate_is_refused(served: Daemon) -> None:
    untrusting = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIConnectionError) as err:
        _chat(untrusting)
    causes = []
    cause: BaseException | None = err.value
    while cause is not None:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    assert any(isinstance(c, ssl.SSLCertVerificationError) for c in causes), causes


def test_plain_http_to_the_tls_port_is_refused(served: Daemon) -> None:
    plain = openai.OpenAI(
        base_url=f"http://127.0.0.1:{served.port}/v1", api_key="unused", max_retries=0
    )
    with pytest.raises(openai.APIConnectionError):
        _chat(plain)
    assert _chat(served.client())  # and HTTPS goes on


def test_llmd_models_reaches_its_daemon_over_https(served: Daemon) -> None:
    """The admin commands read the config: HTTPS, trusting the configured certificate."""
    work = served.log.parent
    config = work / "cli.toml"  # the daemon's own file plus the port it was given
    config.write_text(
        (work / "llmd.toml").read_text().replace("[server]\n", f"[server]\nport = {served.port}\n")
    )
    listed = _llmd("models", "list", "--config", str(config), "--json", cwd=work)
    assert listed.returncode == 0, listed.stderr
    assert "smollm2" in listed.stdout


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("missing.pem", ":6: server.tls_key: {tls}/missing.pem: cannot read: No such file"),
        ("cert.pem", ":6: server.tls_key: {tls}/cert.pem: no PEM private key in it"),
        ("other/key.pem", ":6: server.tls_key: {tls}/other/key.pem: not the private key of"),
    ],
)
def test_a_pair_that_cannot_be_used_stops_start_up_with_file_line_and_reason(
    tmp_path: Path, key: str, expected: str
) -> None:
    tls = tmp_path / "tls"
    _self_signed(tls)
    _self_signed(tls / "other")
    path = tmp_path / "llmd.toml"
    path.write_text(
        f'models_dir = "{tmp_path}"\n\n[server]\nport = 1\n'
        f'tls_cert = "tls/cert.pem"\ntls_key = "tls/{key}"\n'
    )
    message = f"{path}{expected.format(tls=tls)}"
    checked = _llmd("check-config", "--config", str(path), cwd=tmp_path)
    assert checked.returncode == 2 and message in checked.stderr, checked.stderr
    served = _llmd("serve", "--config", str(path), cwd=tmp_path)
    assert served.returncode == 2 and message in served.stderr, served.stderr


def test_plain_http_beyond_loopback_is_warned_about_and_tls_waits_for_a_restart(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    d = start_daemon(tmp_path, '[server]\nhost = "0.0.0.0"\n', False, models_dir=models)
    try:
        # The daemon's log is written by a thread of its own: it may trail /health's answer.
        warning = "over plain HTTP: API keys, prompts and answers cross the network in clear "
        d.wait_until(lambda: warning in d.logs(), 30)
        assert "server.tls_cert and server.tls_key" in d.logs()
        # A pair added to the file of a running plain daemon: reloaded, but HTTPS only after a
        # restart (the port keeps speaking what its clients connected with).
        _self_signed(tmp_path / "tls")
        config = tmp_path / "llmd.toml"
        config.write_text(
            config.read_text() + 'tls_cert = "tls/cert.pem"\ntls_key = "tls/key.pem"\n'
        )
        d.proc.send_signal(signal.SIGHUP)
        d.wait_until(lambda: "configuration reloaded" in d.logs(), 60)
        assert "HTTPS is turned on only by a restart" in d.logs()
        assert d.get_json("/health") == {"status": "ok"}  # still plain HTTP, on the same port
    finally:
        assert d.stop() == 0


def test_sighup_rotates_the_pair_and_refuses_a_broken_one(tmp_path: Path) -> None:
    work = tmp_path / "d"
    old_cert, old_key = _self_signed(work / "tls")  # where TLS_CONFIG's relative paths point
    new_cert, new_key = _self_signed(tmp_path / "new")
    kept_old = shutil.copy(old_cert, tmp_path / "old.pem")
    d = start_daemon(work, TLS_CONFIG, ca=old_cert)
    try:
        assert _served_cert(d) == _der(old_cert)
        streaming = _trusting(d, old_cert)
        stream = streaming.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Tell a long story."}],
            max_tokens=LONG,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        chunks = iter(stream)
        next(chunks)

        # Renewal: the new files replace the old ones (as certbot's do), then a reload.
        shutil.copy(new_key, old_key)
        shutil.copy(new_cert, old_cert.with_suffix(".tmp"))
        old_cert.with_suffix(".tmp").replace(old_cert)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_until(lambda: _served_cert(d) == _der(new_cert), 60)
        assert "TLS: serving " in d.logs() and "to new connections" in d.logs()
        smollm2 = next(m for m in d.health()["models"] if m["name"] == "smollm2")
        assert smollm2["running"] == 1  # the stream made before the reload is still going
        assert _chat(_trusting(d, new_cert))  # a new connection, on the new certificate
        with pytest.raises(openai.APIConnectionError):
            _chat(_trusting(d, kept_old))  # a client that trusts only the old one

        rest = list(chunks)  # the old connection goes on to the end
        streaming.close()
        assert rest[-1].usage is not None and rest[-1].usage.completion_tokens == LONG

        # A broken pair (the key of another certificate): refused, the new pair stays.
        _self_signed(tmp_path / "third")
        shutil.copy(tmp_path / "third" / "key.pem", old_key)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_until(lambda: "reload refused" in d.logs(), 60)
        refused = next(line for line in d.logs().splitlines() if "reload refused" in line)
        assert "server.tls_key" in refused and "not the private key of" in refused
        assert _served_cert(d) == _der(new_cert)
        assert _chat(_trusting(d, new_cert))
    finally:
        assert d.stop() == 0, d.logs()
