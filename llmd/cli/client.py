"""The running daemon's admin API as the CLI calls it (`llmd models`, `llmd cache`, the cache
part of `llmd usage purge`): where it listens, and one JSON call.

The URL is `--url`, else the config's server.host and port (HTTPS when it has a TLS pair,
trusting that certificate whatever name it carries). Once keys exist, the admin API needs an
admin key: the CLI sends `$LLMD_ADMIN_KEY` when it is set.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmd.settings import Settings

ADMIN_KEY_ENV = "LLMD_ADMIN_KEY"


class DaemonError(Exception):
    """The daemon could not be reached, or answered an error (its message, with the status)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Daemon:
    url: str
    tls: ssl.SSLContext | None = None

    def call(
        self,
        path: str,
        method: str = "GET",
        body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
        timeout: float = 600,
    ) -> Any:
        """The JSON answer of `method path?query` with `body`; DaemonError otherwise."""
        url = self.url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Content-Type": "application/json"}
        if secret := os.environ.get(ADMIN_KEY_ENV, "").strip():
            headers["Authorization"] = f"Bearer {secret}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.tls) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except Exception:  # noqa: BLE001 - not our error shape: show the status
                message = exc.reason
            raise DaemonError(f"{exc.code}: {message}", exc.code) from None
        except urllib.error.URLError as exc:
            raise DaemonError(f"cannot reach the daemon at {self.url}: {exc.reason}") from None
        except (OSError, ValueError) as exc:  # a reset, a timeout, a body that is not JSON
            raise DaemonError(f"no answer from the daemon at {self.url}: {exc}") from None


def daemon_at(url: str | None, settings: Callable[[], Settings]) -> Daemon:
    """The daemon at `url`, or where the settings (read only then) say it listens."""
    if url:
        return Daemon(str(url).rstrip("/"))
    server = settings().server
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
    if server.tls_cert is None:
        return Daemon(f"http://{host}:{server.port}")
    from llmd.tls import pinned_client_context

    try:
        return Daemon(f"https://{host}:{server.port}", pinned_client_context(server.tls_cert))
    except (OSError, ssl.SSLError) as exc:
        raise DaemonError(f"cannot read {server.tls_cert} (server.tls_cert): {exc}") from None
