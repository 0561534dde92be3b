"""Finding model files: which files in models_dir are models, and a watchdog that wakes the
manager when anything in that directory changes.

The watcher only says "look again"; what changed is decided by comparing file stats in the
manager's scan, so a lost or duplicated event can never leave the manager wrong for long
(a full rescan also runs every loading.rescan_s).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from llmd.gguf import SPLIT_RE

log = logging.getLogger("llmd.models")

FileKey = tuple[tuple[int, int, int], ...]
"""(size, mtime_ns, inode) of each file of a model: a new version has a new key."""


@dataclass(frozen=True)
class Candidate:
    name: str
    path: Path


def model_name(path: Path) -> str:
    """A model's name from its file name: the stem (without a split suffix), made safe."""
    stem = path.name
    if match := SPLIT_RE.match(stem):
        stem = match["stem"]
    else:
        stem = stem.removesuffix(".gguf")
    name = re.sub(r"[^A-Za-z0-9._:/-]", "-", stem).lstrip("._:/-")
    return name[:128] or "model"


def find_models(directory: Path) -> list[Candidate]:
    """The models in a directory: each .gguf file, split models once (by their first part).

    Hidden files and names that do not end in .gguf (a copy tool's '.part' or '.tmp') are
    skipped, so copying to a temporary name and renaming is always safe.
    """
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    out = []
    for name in names:
        if name.startswith(".") or not name.endswith(".gguf"):
            continue
        path = directory / name
        match = SPLIT_RE.match(name)
        if match and int(match["part"]) != 1:
            continue
        out.append(Candidate(model_name(path), path))
    return out


def file_key(paths: list[Path]) -> FileKey | None:
    """Stats of a model's files; None when one is missing."""
    stats = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            return None
        stats.append((st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(stats)


def split_parts(path: Path) -> list[Path]:
    match = SPLIT_RE.match(path.name)
    if not match:
        return [path]
    count = int(match["count"])
    return [
        path.with_name(f"{match['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)
    ]


class _Wake(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        self.loop = loop
        self.event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        names = [str(event.src_path), str(getattr(event, "dest_path", "") or "")]
        if any(n.endswith(".gguf") for n in names):
            self.loop.call_soon_threadsafe(self.event.set)


class DirectoryWatcher:
    """Sets `event` whenever a .gguf file in `directory` is created, written, moved, removed."""

    def __init__(self, directory: Path, event: asyncio.Event) -> None:
        self.directory = directory
        self.event = event
        self._observer: Observer | None = None  # type: ignore[valid-type]

    def start(self) -> bool:
        if not self.directory.is_dir():
            log.warning("models_dir %s does not exist: not watching it", self.directory)
            return False
        observer = Observer()
        observer.schedule(
            _Wake(asyncio.get_running_loop(), self.event), str(self.directory), recursive=False
        )
        observer.daemon = True
        observer.start()
        self._observer = observer
        log.info("watching %s for models", self.directory)
        return True

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer = None
