"""route.lua, the Lua filter shipped as package data, with its shard count filled in."""

from __future__ import annotations

from importlib import resources


def route_script(shards: int, layout: str = "table") -> str:
    """route.lua's source for a data path with `shards` route shards (1: unsharded) in
    `layout` (resources.DataPathConfig.layout)."""
    if layout not in ("table", "matcher"):
        raise ValueError(f"unknown route layout {layout!r}")
    body = resources.files(__package__).joinpath("route.lua").read_text(encoding="utf-8")
    return f'local SHARDS = {int(shards)}\nlocal LAYOUT = "{layout}"\n{body}'

