"""The scheduler's placement wing: which pod gets a copy and which copies make room.

Owns the decision: the full scan over pod views (`scan.place`, whose docstring states
the rules), the rules both searches share (`rules`: protections, eviction orders, the
cheapest pod to evict on, the Plans and their reasons), the index that answers the same decision without scanning every
pod (`index`: `ClusterIndex`, `place_indexed`), and the views of the cluster kept in
memory between decisions (`views`: `ClusterViews`, read from the live store).

`scan`, `rules` and `index` are pure (no I/O, no asyncio; the import-linter contract in
pyproject.toml checks it) and may import only `meshserve.scheduler.models`. `views` may
import the live store as well. Nothing here imports the use cases or the transports.
"""
