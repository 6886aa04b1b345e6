"""Model archives: packing a directory for upload, refusing unsafe members on download."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from client.archives import pack_directory, unpack_archive
from client.errors import UnsafeArchiveError

# -- archives --------------------------------------------------------------------------------


def _archive_with(member: tarfile.TarInfo, payload: bytes = b"") -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        safe = tarfile.TarInfo("config.json")
        safe.size = 2
        tar.addfile(safe, io.BytesIO(b"{}"))
        tar.addfile(member, io.BytesIO(payload) if member.isfile() else None)
    buffer.seek(0)
    return buffer


def _file_member(name: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.size = 4
    return member


def _link_member(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = target
    return member


UNSAFE_MEMBERS = {
    "parent-traversal": _file_member("../evil"),
    "nested-traversal": _file_member("weights/../../evil"),
    "absolute-path": _file_member("/tmp/evil"),
    "symlink": _link_member("model.safetensors", "/etc/passwd", tarfile.SYMTYPE),
    "relative-symlink": _link_member("tokenizer.json", "config.json", tarfile.SYMTYPE),
    "hardlink": _link_member("weights.bin", "config.json", tarfile.LNKTYPE),
}


@pytest.mark.parametrize("member", UNSAFE_MEMBERS.values(), ids=list(UNSAFE_MEMBERS))
def test_unsafe_archive_members_are_refused_before_anything_is_written(
    tmp_path: Path, member: tarfile.TarInfo
) -> None:
    dest = tmp_path / "nested" / "dest"
    with pytest.raises(UnsafeArchiveError):
        unpack_archive(_archive_with(member, b"evil"), dest)
    assert not dest.exists()
    assert not (tmp_path / "nested" / "evil").exists()
    assert not (tmp_path / "evil").exists()


def test_pack_then_unpack_reproduces_the_model_directory(tmp_path: Path) -> None:
    model_dir = tmp_path / "tiny-model"
    (model_dir / "tokenizer").mkdir(parents=True)
    files = {
        "config.json": b'{"model_type": "llama"}',
        "model.safetensors": bytes(range(256)) * 64,
        "tokenizer/tokenizer.json": b'{"version": "1.0"}',
    }
    for relative, content in files.items():
        (model_dir / relative).write_bytes(content)

    archive = io.BytesIO()
    pack_directory(model_dir, archive)
    archive.seek(0)
    with tarfile.open(fileobj=archive, mode="r:gz") as tar:
        assert sorted(tar.getnames()) == sorted(files)
    archive.seek(0)
    dest = tmp_path / "downloaded"
    unpacked = unpack_archive(archive, dest)

    assert sorted(p.relative_to(dest).as_posix() for p in unpacked) == sorted(files)
    for relative, content in files.items():
        assert (dest / relative).read_bytes() == content


def test_packing_follows_symlinks_so_the_archive_stays_unpackable(tmp_path: Path) -> None:
    model_dir = tmp_path / "linked-model"
    model_dir.mkdir()
    blob = tmp_path / "blob"
    blob.write_bytes(b"weights")
    (model_dir / "model.safetensors").symlink_to(blob)
    archive = io.BytesIO()
    pack_directory(model_dir, archive)
    archive.seek(0)
    unpack_archive(archive, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == b"weights"
    assert not (tmp_path / "out" / "model.safetensors").is_symlink()


def test_a_single_enclosing_folder_is_dropped_on_unpacking(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        folder = tarfile.TarInfo("mdl_1")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, content in [("mdl_1/config.json", b"{}"), ("mdl_1/tok/vocab.json", b"[]")]:
            member = tarfile.TarInfo(name)
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
    buffer.seek(0)
    dest = tmp_path / "model"
    unpacked = unpack_archive(buffer, dest)
    assert sorted(p.relative_to(dest).as_posix() for p in unpacked) == [
        "config.json",
        "tok/vocab.json",
    ]
    assert (dest / "tok" / "vocab.json").read_bytes() == b"[]"
    assert not (dest / "mdl_1").exists()
