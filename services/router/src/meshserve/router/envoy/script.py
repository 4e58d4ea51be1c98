"""route.lua, the Lua filter shipped as package data, with its parameters filled in."""

from __future__ import annotations

import re
from importlib import resources

_NAMESPACE = re.compile(r"[A-Za-z0-9._-]*")


def route_script(shards: int, layout: str = "table", namespace: str = "") -> str:
    """route.lua's source for a data path with `shards` route shards (1: unsharded) in
    `layout` (resources.DataPathConfig.layout); `namespace` set: every name a client sends
    (in the message, the path or a routing header) is looked up as `<namespace>__<name>`."""
    if layout not in ("table", "matcher"):
        raise ValueError(f"unknown route layout {layout!r}")
    if not _NAMESPACE.fullmatch(namespace):
        raise ValueError(f"router namespace {namespace!r}: use letters, digits, '.', '_' and '-' only")
    body = resources.files(__package__).joinpath("route.lua").read_text(encoding="utf-8")
    return f'local SHARDS = {int(shards)}\nlocal LAYOUT = "{layout}"\nlocal NAMESPACE = "{namespace}"\n{body}'
