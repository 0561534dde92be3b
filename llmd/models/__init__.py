"""The models llmd knows and the processes that serve them.

- `catalogue`: what is known (config tables, files in models_dir), by name and alias;
  `Entry` (a known model) and `Model` (one loaded version of it); the directory scan.
- `options`: settings -> a model's engine options and memory estimate.
- `budget`: the memory budget, a model's cost, and `choose_victims` (what to unload to make
  room, or why it cannot fit).
- `memory`: the budget applied to the loaded models (measurements, making room).
- `manager`: `ModelManager`: requests' leases and keep-alive, load, hot swap, drain, reload.
- `status`: `ModelStatus`, the one view of a model every report renders.
"""

from llmd.models.budget import InsufficientMemory, choose_victims, service_memory_limit
from llmd.models.catalogue import Entry, Model, Process
from llmd.models.manager import ModelListener, ModelManager, ProcessFactory
from llmd.models.options import auto_threads, engine_options, estimate_for
from llmd.models.status import MemoryStatus, ModelStatus, Overview, ProcessStatus

__all__ = [
    "Entry",
    "InsufficientMemory",
    "MemoryStatus",
    "Model",
    "ModelListener",
    "ModelManager",
    "ModelStatus",
    "Overview",
    "Process",
    "ProcessFactory",
    "ProcessStatus",
    "auto_threads",
    "choose_victims",
    "engine_options",
    "estimate_for",
    "service_memory_limit",
]
