"""The model manager in-process, with fake model processes: leases and keep-alive, loading on
demand, making room, refusals, hot swaps, settings reloads, and the status view."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from llmd.engine import messages as m
from llmd.errors import ServiceUnavailable
from llmd.models import InsufficientMemory, ModelManager
from llmd.models.status import model_status, overview
from llmd.sampling import resolve
from llmd.settings import Settings
from llmd.settings_file import load_settings
from tests.unit.fake_process import FakeProcesses, MiB, until, write_models


def settings_for(models_dir: Path, **overrides: Any) -> Settings:
    base = {
        "models_dir": str(models_dir),
        "loading.watch": False,
        "loading.rescan_s": 0.05,
        "loading.settle_s": 0,
        "memory.budget": "1GiB",
        "memory.reserve": 0,
        "engine.ctx_per_seq": 256,
        "engine.parallel": 2,
    }
    return load_settings(None, {**base, **overrides})


def run(
    settings: Settings,
    processes: FakeProcesses,
    test: Callable[[ModelManager, list[tuple[str, str]]], Awaitable[None]],
) -> None:
    """Start a manager with fake processes, run `test(manager, events)`, stop it."""

    async def main() -> None:
        manager = ModelManager(settings, processes, read_rss=processes.read_rss)
        events: list[tuple[str, str]] = []
        manager.listeners.append(lambda name, event, why: events.append((name, event)))
        await manager.start()
        try:
            await test(manager, events)
        finally:
            await manager.stop()

    asyncio.run(main())


def test_a_model_found_in_the_directory_loads_on_demand_and_keep_alive_0_unloads_it(
    tmp_path: Path,
) -> None:
    processes = FakeProcesses()

    async def test(manager: ModelManager, events: list[tuple[str, str]]) -> None:
        entry = manager.entries["a"]
        assert entry.state() == "unloaded" and processes.made == []
        async with manager.use("a", keep_alive=0) as model:
            assert model.active == 1 and model.busy
            assert model.process.state == "ready" and entry.current is model
        process = processes.of("a")[0]
        await until(lambda: process.stops == 1, "unloaded after its request")
        assert entry.current is None and entry.state() == "unloaded"
        assert events == [("a", "load"), ("a", "unload")]
        assert manager.memory_used_bytes() == 0

    run(settings_for(write_models(tmp_path / "models", "a")), processes, test)


def test_keep_alive_keeps_an_idle_model_until_it_expires(tmp_path: Path) -> None:
    processes = FakeProcesses()

    async def test(manager: ModelManager, events: list[tuple[str, str]]) -> None:
        async with manager.use("a") as model:
            pass
        assert model.expires is not None
        assert model.expires - model.last_used == pytest.approx(300, abs=0.1)  # loading.keep_alive
        async with manager.use("a", keep_alive=None) as again:
            assert again is model  # the same process serves the next request
        assert model.expires is None  # None: kept until unloaded
        async with manager.use("a", keep_alive=0.2):
            pass
        await asyncio.sleep(0.1)
        assert manager.entries["a"].current is model  # not yet
        await until(lambda: model.process.state == "stopped", "expired", timeout=3)
        assert events == [("a", "load"), ("a", "unload")]

    run(settings_for(write_models(tmp_path / "models", "a")), processes, test)


def test_a_failed_load_is_reported_and_refused_until_the_file_changes(tmp_path: Path) -> None:
    processes = FakeProcesses()
    processes.configure("a", fail_load="unknown model architecture: 'xyz'")

    async def test(manager: ModelManager, events: list[tuple[str, str]]) -> None:
        for _ in range(2):
            with pytest.raises(ServiceUnavailable) as err:
                async with manager.use("a"):
                    pass
            assert err.value.code == "model_not_ready"
            assert "unknown model architecture: 'xyz'" in err.value.message
        assert len(processes.of("a")) == 1  # the second request did not load it again
        entry = manager.entries["a"]
        assert entry.state() == "failed" and entry.current is None
        assert processes.of("a")[0].stops == 1
        assert events == [("a", "load_failed")]

    run(settings_for(write_models(tmp_path / "models", "a")), processes, test)


def test_room_is_made_by_unloading_the_least_recently_used_idle_unpinned_model(
    tmp_path: Path,
) -> None:
    # Each process measures 400 MiB; a load is estimated at ~71 MiB: two fit in 850 MiB, and
    # a third only once one of them is unloaded.
    processes = FakeProcesses(rss=400 * MiB)
    models_dir = write_models(tmp_path / "models", "a", "b", "c", "d")

    async def test(manager: ModelManager, events: list[tuple[str, str]]) -> None:
        for name in ("a", "b"):
            async with manager.use(name):
                pass
        a, b = manager.entries["a"].current, manager.entries["b"].current
        assert a is not None and b is not None
        assert manager.memory_used_bytes() == 800 * MiB
        async with manager.use("c"):
            pass
        assert manager.entries["a"].current is None and a.process.state == "stopped"
        assert manager.entries["b"].current is b and b.process.state == "ready"
        # b is now the least recently used, but pinned: c goes instead.
        manager.entries["b"].pinned = True
        async with manager.use("a"):
            pass
        assert manager.entries["c"].current is None
        assert manager.entries["b"].current is b
        # A busy model is not unloaded either: holding a, d unloads nothing and is refused.
        async with manager.use("a"):
            with pytest.raises(InsufficientMemory) as err:
                async with manager.use("d"):
                    pass
        assert err.value.code == "insufficient_memory" and err.value.retry_after == 30
        assert err.value.message == (
            "model 'd' needs about 71 MiB (weights 0 MiB, KV cache 0 MiB, other 71 MiB) but "
            "the memory budget is 850 MiB and 800 MiB is in use by a 400 MiB (busy), "
            "b 400 MiB (pinned); lower its ctx_per_seq or parallel, raise memory.budget, or "
            "unload a model"
        )
        assert [p.name for p in processes.made] == ["a", "b", "c", "a"]
        # Evictions are not counted as unloads (as before the package split).
        assert events == [("a", "load"), ("b", "load"), ("c", "load"), ("a", "load")]

    run(settings_for(models_dir, **{"memory.budget": 850 * MiB}), processes, test)


def test_hot_swap_serves_new_requests_from_the_new_version_and_drains_the_old(
    tmp_path: Path,
) -> None:
    processes = FakeProcesses()
    models_dir = write_models(tmp_path / "models", "a")
    settings = settings_for(models_dir, **{"models.chat.path": "a.gguf"})

    async def test(manager: ModelManager, events: list[tuple[str, str]]) -> None:
        entry = manager.entries["chat"]
        old = entry.current  # configured: preloaded
        assert old is not None and manager.default == "chat"
        async with manager.use("chat") as held:
            new = await manager.reload("chat")
            assert new is not held and entry.current is new
            async with manager.use(None) as other:  # the default model
                assert other is new
            # The old version finishes its request before its process ends.
            assert held.process.state == "ready" and held.draining and entry.old == [held]
            assert model_status(manager, entry).others[0].pid == held.process.pid
        await until(lambda: old.process.state == "stopped", "old version drained")
        assert entry.old == [] and entry.current is new
        assert events == [("chat", "load"), ("chat", "swap"), ("chat", "unload")]

    run(settings, processes, test)


def test_apply_settings_retunes_adds_and_removes_without_dropping_a_request(
    tmp_path: Path,
) -> None:
    processes = FakeProcesses()
    models_dir = write_models(tmp_path / "models", "a", "b")
    first = settings_for(models_dir, **{"models.chat.path": "a.gguf"})
    second = settings_for(
        models_dir,
        **{
            "models.chat.path": "a.gguf",
            "models.chat.parallel": 3,
            "models.chat.aliases": ["talk"],
            "models.embed.path": "b.gguf",
        },
    )
    third = settings_for(models_dir, **{"models.embed.path": "b.gguf"})

    async def test(manager: ModelManager, events: list[tuple[str, str]]) -> None:
        assert set(manager.entries) == {"chat", "b"}
        chat = manager.entries["chat"]
        old = chat.current
        assert old is not None and old.process.options.load.parallel == 2
        async with manager.use("chat") as held:
            await manager.apply_settings(second)
            assert chat.current is not None and chat.current is not held
            assert chat.current.process.options.load.parallel == 3
            assert held.process.state == "ready"  # still serving its request
            # b.gguf is now the configured model "embed" (preloaded), no longer plain "b".
            assert set(manager.entries) == {"chat", "embed"}
            assert manager.entries["embed"].current is not None
            assert manager.resolve("talk") is chat
        await until(lambda: old.process.state == "stopped", "old chat drained")
        await manager.apply_settings(third)
        await until(lambda: "chat" not in manager.entries, "chat removed")
        assert "talk" not in manager.names
        # Its file is still in the directory: served under its own name again.
        await until(lambda: "a" in manager.entries, "a back as a plain file")
        assert manager.entries["a"].current is None and not manager.entries["a"].configured
        assert ("chat", "remove") in events

    run(first, processes, test)


def test_the_status_view_reads_the_models_and_their_processes(tmp_path: Path) -> None:
    processes = FakeProcesses(rss=300 * MiB)
    models_dir = write_models(tmp_path / "models", "a", "b")
    settings = settings_for(models_dir, **{"models.chat.path": "a.gguf", "server.max_queue": 1})

    async def test(manager: ModelManager, events: list[tuple[str, str]]) -> None:
        chat = manager.entries["chat"]
        assert chat.current is not None
        process = processes.of("chat")[0]
        view = overview(manager)
        assert view.default_model == "chat"
        assert [s.name for s in view.models] == ["chat", "b"]
        loaded, plain = view.models
        assert loaded.state == "ready" and loaded.loaded and loaded.source == "config"
        assert loaded.current is not None and loaded.current.pid == process.pid
        assert loaded.live.rss_bytes == 300 * MiB and loaded.current.peak_rss_bytes == 300 * MiB
        assert (loaded.slots, loaded.queue_limit, loaded.engine_ctx_per_seq) == (2, 1, 256)
        assert loaded.keep_alive_s is None and loaded.preload  # preloaded: kept forever
        assert plain.state == "unloaded" and plain.process is None and plain.live.pid is None
        assert plain.estimate is not None and plain.estimated_bytes == plain.estimate.total
        assert plain.keep_alive_s == 300 and plain.source == "models_dir"
        assert view.memory.used_bytes == 300 * MiB
        assert view.memory.budget_bytes == 1 << 30
        # Two slots and a queue of one: three held requests saturate it.
        process.gate.clear()
        handles = [
            process.submit(m.GenerateRequest(f"r{i}", "hi there", resolve())) for i in range(3)
        ]
        await asyncio.sleep(0)
        status = model_status(manager, chat)
        assert status.live.requests_in_flight == 3 and status.live.running == 3
        assert status.saturated
        process.gate.set()
        for handle in handles:
            events_of = [type(e).__name__ async for e in handle.events()]
            assert events_of == ["Started", "Admitted", "Delta", "Delta", "Delta", "Delta"]
        assert not model_status(manager, chat).saturated

    run(settings, processes, test)


def test_a_file_taken_over_by_a_table_is_not_reported_as_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    processes = FakeProcesses()
    models_dir = write_models(tmp_path / "models", "a", "b")
    taken = settings_for(models_dir, **{"models.embed.path": "b.gguf"})

    async def test(manager: ModelManager, events: list[tuple[str, str]]) -> None:
        await manager.apply_settings(taken)
        await until(lambda: "b" not in manager.entries, "plain b replaced by embed")
        (models_dir / "a.gguf").unlink()
        await until(lambda: "a" not in manager.entries, "a gone with its file")

    with caplog.at_level("INFO", logger="llmd"):
        run(settings_for(models_dir), processes, test)
    lines = [r.getMessage() for r in caplog.records]
    # b.gguf is still there: the journal says a table took it over, not that it was removed.
    assert "model b: its file is now served as embed ([models.embed]): draining and removing" in (
        lines
    )
    assert "model a: file removed: draining and removing" in lines
