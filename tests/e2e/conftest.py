"""Fixtures that start the real daemon, with the real models, on a free port."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench import daemon as launcher
from bench.daemon import GEMMA, MODELS, ROOT, SMOL, Daemon, free_port


@pytest.fixture(autouse=True)
def _collect_clients() -> Iterator[None]:
    """The official clients a test made and did not close are collected when it ends, their
    sockets' ResourceWarnings ignored: an `openai.OpenAI` is a reference cycle (its resources
    point back at it), so the cyclic collector finalizes it in an arbitrary order, a socket
    before the client that would have closed it, at an arbitrary later moment, where the
    warning (an error under the suite's filter) failed whichever test was running then. These
    are the test process's own sockets; the daemon under test is another process."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


# Names the test modules import from here.
__all__ = ["GEMMA", "MODELS", "ROOT", "SMOL", "Daemon", "bearer", "free_port", "start_daemon"]


def bearer(secret: str) -> dict[str, str]:
    """The Authorization header for an API key."""
    return {"Authorization": f"Bearer {secret}"}


def start_daemon(
    tmp: Path,
    config: str,
    wait_ready: bool = True,
    models_dir: Path = MODELS,
    ca: Path | None = None,
) -> Daemon:
    """The daemon (bench.daemon.start_daemon) on `config` and the models in `models_dir`;
    back when /ready answers, or only /health with `wait_ready=False`; over HTTPS trusting
    `ca` when the config sets a TLS pair."""
    config = f'models_dir = "{models_dir}"\n' + config
    return launcher.start_daemon(tmp, config, "/ready" if wait_ready else "/health", ca=ca)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """test_health.py's check of the shared daemon's log runs after every test, wherever its
    file sorts: it is to see what all the tests that used that daemon sent it."""
    items.sort(key=lambda item: item.name == "test_no_server_errors_logged")


BASE_CONFIG = f"""
[server]
default_model = "smollm2"
max_queue = 32

[engine]
ctx_per_seq = 1024
parallel = 16
batch_size = 256

[models.smollm2]
path = "{SMOL}"
aliases = ["smol"]

[models.gemma3-270m]
path = "{GEMMA}"
parallel = 2
"""


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon serving both real models, shared by the API tests."""
    d = start_daemon(tmp_path_factory.mktemp("daemon"), BASE_CONFIG)
    yield d
    assert d.stop() == 0, d.logs()


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """A daemon of a test's own, with its own config; stopped when the test ends."""
    started: list[Daemon] = []

    def make(config: str, wait_ready: bool = True) -> Daemon:
        d = start_daemon(tmp_path / f"d{len(started)}", config, wait_ready)
        started.append(d)
        return d

    for sub in range(4):
        (tmp_path / f"d{sub}").mkdir()
    yield make
    for d in started:
        d.stop()
