"""PersistentVolumeClaims for the puller: `pvc://<claim>/<path>` and `type: pvc` keys (`name`).

ModelMesh mounts each claim read-only at `<pvc_mounts>/<claim>` and symlinks the model
from there instead of copying it. Here every FILE gets its own absolute symlink, and the
folders above the files are real folders in the model directory, because the layouts
that follow need that:

- `adapter.folder_files` lists with `rglob`, which does not enter a symlinked folder;
- the MLServer/Triton/OVMS layouts move files into version folders (`Path.replace`
  renames the link itself; an absolute link still points at the same target), and write
  their config files only after moving the user's original aside, so nothing is ever
  written through a link into the claim;
- unloading removes the model folder with `shutil.rmtree`, which unlinks links and never
  follows them.

Everything is checked before the first link is made: the claim name, the path (no `..`,
not absolute), and the resolved target of every file and folder, which must stay inside
the claim (a symlink in the claim pointing outside it is refused). The size reported is
the bytes of the link targets.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from meshserve.common.errors import FailedPrecondition, InvalidArgument
from meshserve.common.storage import safe_join


@dataclass(frozen=True)
class PlannedLink:
    name: str
    """Relative POSIX path of the link under the model folder."""
    target: Path
    """The resolved file inside the claim."""
    size: int


def link(pvc_mounts: Path, *, claim: str, path: str, dest: Path) -> int:
    """Symlink the file or the files of the folder at `<pvc_mounts>/<claim>/<path>` into
    `dest`; returns the bytes of the targets. Blocking."""
    links, folders = plan(pvc_mounts, claim=claim, path=path)
    dest.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        safe_join(dest, folder).mkdir(parents=True, exist_ok=True)
    for item in links:
        # the folder is checked, not the name itself: it may already be our link (a reload)
        where = PurePosixPath(item.name)
        target = safe_join(dest, str(where.parent)) / where.name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.link")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(item.target)
        os.replace(tmp, target)  # a reload of the same folder replaces the old link atomically
    return sum(item.size for item in links)


def size(pvc_mounts: Path, *, claim: str, path: str) -> int:
    """The bytes `link` would report, without linking anything."""
    links, _ = plan(pvc_mounts, claim=claim, path=path)
    return sum(item.size for item in links)


def plan(pvc_mounts: Path, *, claim: str, path: str) -> tuple[list[PlannedLink], list[str]]:
    """The links to make and the (possibly empty) folders to create, or an error."""
    root = _claim_root(pvc_mounts, claim)
    rel = path.strip()
    if rel.startswith("/") or PurePosixPath(rel).is_absolute():
        raise InvalidArgument(f"model path {path!r} on PVC {claim!r} must be relative to the claim")
    try:
        source = safe_join(root, rel.rstrip("/"))
    except InvalidArgument as err:
        raise InvalidArgument(f"model path {path!r} leaves PVC {claim!r} ({err.message})") from err
    where = f"pvc://{claim}/{rel}"
    if not source.exists():
        raise FailedPrecondition(f"no file or folder at {where}")
    resolved = Path(os.path.realpath(source))
    if resolved.is_file():
        name = PurePosixPath(rel).name or "_model"
        return [PlannedLink(name, resolved, resolved.stat().st_size)], []
    if not resolved.is_dir():
        raise FailedPrecondition(f"{where} is neither a file nor a folder")
    links: list[PlannedLink] = []
    folders: list[str] = []
    _walk(resolved, PurePosixPath(), root=root, where=where, links=links, folders=folders, above=frozenset())
    if not links:
        raise FailedPrecondition(f"the folder {where} holds no files")
    return links, folders


def _claim_root(pvc_mounts: Path, claim: str) -> Path:
    if not claim:
        raise FailedPrecondition("storage config for type pvc needs the field 'name' (the claim)")
    if "/" in claim or claim in (".", ".."):
        raise InvalidArgument(f"PVC name {claim!r} is not a claim name")
    # the mount point is the operator's (a real folder in Kubernetes, maybe a symlink to a
    # folder of the stack in local mode): its own location is trusted, the claim name is not
    root = (pvc_mounts / claim).resolve()
    if not root.is_dir():
        raise FailedPrecondition(
            f"PVC {claim!r} is not mounted at {root}: list it in the storage-config secret, or enable allowAnyPVC"
        )
    return root


def _walk(
    folder: Path, rel: PurePosixPath, *, root: Path, where: str, links: list[PlannedLink], folders: list[str],
    above: frozenset[Path],
) -> None:
    """Every file below `folder` (already resolved and inside `root`); symlinks are followed
    only while they stay inside the claim, and never into a folder above (no loops)."""
    if folder in above:
        raise InvalidArgument(f"{where}/{rel} is a symlink to a folder above it (a loop)")
    above = above | {folder}
    with os.scandir(folder) as entries:
        children = sorted(entries, key=lambda e: e.name)
    if rel.parts and not children:
        folders.append(rel.as_posix())
    for entry in children:
        child_rel = rel / entry.name
        resolved = Path(os.path.realpath(entry.path))
        if resolved != root and root not in resolved.parents:
            raise InvalidArgument(f"{where}/{child_rel} is a symlink that leaves the PVC")
        try:
            info = resolved.stat()
        except OSError as err:
            raise FailedPrecondition(f"{where}/{child_rel} cannot be read: {err.strerror}") from err
        if stat.S_ISDIR(info.st_mode):
            _walk(resolved, child_rel, root=root, where=where, links=links, folders=folders, above=above)
        elif stat.S_ISREG(info.st_mode):
            links.append(PlannedLink(child_rel.as_posix(), resolved, info.st_size))
        # sockets, fifos, devices: not model files, skipped
