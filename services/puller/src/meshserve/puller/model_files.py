"""Which downloaded files belong to the model (pure: names only).

Not the model server's own config file (the layouts rewrite it), not the puller's
bookkeeping (hidden files such as the download manifest, and the user's originals kept
aside) and not partial downloads (`.part`)."""

from __future__ import annotations

from collections.abc import Sequence


def model_files(names: Sequence[str], *, config_file: str) -> list[str]:
    """`names`: relative POSIX paths; the model's own among them, sorted."""
    return sorted(
        n
        for n in names
        if n != config_file and not any(part.startswith(".") for part in n.split("/")) and not n.endswith(".part")
    )


def is_version(part: str) -> bool:
    """A model version folder's name, as Triton and OVMS number them (from 1)."""
    return part.isdigit() and int(part) > 0
