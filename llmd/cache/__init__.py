"""The response cache: answers a request determines (greedy, a seed, an embedding) kept and
given again without model work, scoped to the API key (docs/cache.md).

`keys` says what an answer is filed under (the model's content identity and the engine
request), `entry` how it is kept (the engine's events as JSON), `store` where (the backends'
contract and the memory backend; `redis` the Redis one), and `front` the `ResponseCache` the
serving layer asks, which never lets a backend fail a request.
"""

from __future__ import annotations

from llmd.cache.entry import Events
from llmd.cache.front import CACHE, SHARED, Plan, ResponseCache, cache_control, key_scope

__all__ = ["CACHE", "SHARED", "Events", "Plan", "ResponseCache", "cache_control", "key_scope"]
