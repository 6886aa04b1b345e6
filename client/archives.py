"""Model directories as tar.gz archives: pack one for upload, unpack a download safely.

Packed archives hold the directory's files at their root (``config.json``, …), with no
enclosing folder. On unpacking, an archive whose members all sit under one top-level folder
(``mdl_…/config.json``) loses that folder, so either layout turns ``dest`` into the model
directory itself.
"""

from __future__ import annotations

import copy
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO

from client.errors import UnsafeArchiveError


def pack_directory(directory: Path, archive: IO[bytes]) -> None:
    """Write ``directory``'s regular files, relative to it, as a tar.gz into ``archive``.

    Symbolic links are followed (``save_pretrained`` caches sometimes link blobs), so the
    archive holds only regular files and directories and passes ``unpack_archive``'s checks.
    """
    directory = directory.resolve()
    if not directory.is_dir():
        raise NotADirectoryError(str(directory))
    with tarfile.open(fileobj=archive, mode="w:gz", dereference=True) as tar:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(directory).as_posix(), recursive=False)


def check_member(member: tarfile.TarInfo) -> None:
    """Refuse what could escape the destination or is not plain data: raise UnsafeArchiveError."""
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"archive member has an absolute path: {name!r}")
    if ".." in parts:
        raise UnsafeArchiveError(f"archive member leaves the destination: {name!r}")
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"archive member is a link: {name!r} -> {member.linkname!r}")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"archive member is not a regular file or directory: {name!r}")


def unpack_archive(archive: IO[bytes], dest_dir: Path) -> list[Path]:
    """Check every member first, then extract them all into ``dest_dir``; returns the files.

    Nothing is written when any member is unsafe. ``filter="data"`` is a second, independent
    guard (it also drops setuid bits and device files).
    """
    with tarfile.open(fileobj=archive, mode="r:*") as tar:
        members = tar.getmembers()
        for member in members:
            check_member(member)
        members = strip_common_folder(members)
        dest_dir.mkdir(parents=True, exist_ok=True)
        tar.extractall(dest_dir, members=members, filter="data")
    return [dest_dir / member.name for member in members if member.isfile()]


def strip_common_folder(members: list[tarfile.TarInfo]) -> list[tarfile.TarInfo]:
    """Drop a single top-level folder shared by every member (renamed copies; the folder's own
    entry is left out). Members already at the root are returned unchanged."""
    parts = [PurePosixPath(member.name).parts for member in members]
    roots = {member_parts[0] for member_parts in parts if member_parts}
    files_at_root = any(len(p) == 1 and m.isfile() for p, m in zip(parts, members, strict=True))
    if len(roots) != 1 or files_at_root or roots == {"."}:
        return members
    stripped = []
    for member, member_parts in zip(members, parts, strict=True):
        if len(member_parts) <= 1:
            continue
        renamed = copy.copy(member)
        renamed.name = PurePosixPath(*member_parts[1:]).as_posix()
        stripped.append(renamed)
    return stripped
