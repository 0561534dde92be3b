"""Fixtures that start the real daemon, with the real models, on a free port."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench import daemon as launcher
from bench.daemon import GEMMA, MODELS, ROOT, SMOL, Daemon, free_port

# Names the test modules import from here.
__all__ = [
    "GEMMA",
    "MODELS",
    "ONE_SMALL_MODEL",
    "ROOT",
    "SMOL",
    "Daemon",
    "bearer",
    "free_port",
    "start_daemon",
]


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
    file sorts: it is to see what all the tests that used that daemon sent it.

    And the end-to-end tests ignore ResourceWarnings of their own sockets: an official client
    a test made and did not close (`openai.OpenAI` is a reference cycle, its resources
    pointing back at it) is finalized by the cyclic collector in any order, a socket before
    the client that would have closed it, at any later moment, where the warning (an error
    under the suite's filter) failed whichever test was running then. The daemon under test
    is another process; the unit tests, which run llmd in-process, keep the warning an error."""
    items.sort(key=lambda item: item.name == "test_no_server_errors_logged")
    e2e = Path(__file__).parent
    for item in items:
        if e2e in item.path.parents:
            item.add_marker(pytest.mark.filterwarnings("ignore::ResourceWarning"))


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After the last end-to-end test before a unit test, the clients the end-to-end tests
    left are collected here, under their own ResourceWarning filter: otherwise the cyclic
    collector finalizes their sockets during whichever unit test runs then, and fails it."""
    e2e = Path(__file__).parent
    if e2e in item.path.parents and (nextitem is None or e2e not in nextitem.path.parents):
        gc.collect()


ONE_SMALL_MODEL = f"""
[server]
default_model = "smollm2"

[engine]
ctx_per_seq = 512
parallel = 2

[models.smollm2]
path = "{SMOL}"
"""
"""One SmolLM2 with a small context and two slots: the daemon of a test that needs a model
to answer but not the shared daemon's setup (keys, console, cache administration)."""

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
