"""Bookkeeping of teacher artifacts (sparse logit caches, seqkd generations) shared by jobs.

One row per fingerprint. A job that needs a missing artifact claims the build by inserting a
``building`` row (the unique fingerprint makes that a lock across workers), writes the files,
then marks it ``ready``. A build abandoned by a dead worker is taken over after
``STALE_BUILD``; a concurrent live build makes the job go on without the artifact."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from api.config import Settings
from api.storage import StorageUnavailable, open_store
from models import TeacherArtifact, new_id, utcnow
from models.session import rows_updated, session_scope

STALE_BUILD = timedelta(hours=2)


@dataclass(frozen=True)
class ArtifactRef:
    id: str
    path: Path
    fingerprint: str
    settings: dict[str, Any]


def artifact_root(settings: Settings) -> Path:
    return settings.resolved_artifact_root / "teacher"


def find_ready(
    settings: Settings,
    *,
    kind: str,
    fingerprint: str | None = None,
    teacher_sha256: str | None = None,
    examples_sha256: str | None = None,
) -> ArtifactRef | None:
    """By exact fingerprint, or the newest ready one for this teacher and these examples."""
    with session_scope(settings.resolved_database_url) as session:
        stmt = select(TeacherArtifact).where(
            TeacherArtifact.kind == kind, TeacherArtifact.status == "ready"
        )
        if fingerprint is not None:
            stmt = stmt.where(TeacherArtifact.fingerprint == fingerprint)
        else:
            stmt = stmt.where(
                TeacherArtifact.teacher_sha256 == teacher_sha256,
                TeacherArtifact.examples_sha256 == examples_sha256,
            )
        row = session.scalars(stmt.order_by(TeacherArtifact.created_at.desc()).limit(1)).first()
        if row is None:
            return None
        found = ArtifactRef(row.id, Path(row.path), row.fingerprint, dict(row.settings))
    # Shared storage: this host's cache path, fetched when another host built it.
    store = open_store(settings)
    path = store.localize(found.path)
    try:
        store.ensure_dir(path)
    except StorageUnavailable:
        return None  # as if not built: the job runs the teacher instead
    return ArtifactRef(found.id, path, found.fingerprint, found.settings)


def claim_build(
    settings: Settings,
    *,
    kind: str,
    fingerprint: str,
    teacher_sha256: str,
    examples_sha256: str,
    capture_settings: dict[str, Any],
    job_id: str,
) -> ArtifactRef | None:
    """The right to build this artifact, or None when another live build holds it."""
    artifact_id = new_id("tart")
    path = artifact_root(settings) / kind / fingerprint
    row = TeacherArtifact(
        id=artifact_id, kind=kind, fingerprint=fingerprint, teacher_sha256=teacher_sha256,
        examples_sha256=examples_sha256, settings=capture_settings, status="building",
        path=str(path), created_by_job_id=job_id,
    )  # fmt: skip
    try:
        with session_scope(settings.resolved_database_url) as session:
            session.add(row)
        return ArtifactRef(artifact_id, path, fingerprint, capture_settings)
    except IntegrityError:
        pass
    with session_scope(settings.resolved_database_url) as session:
        stale = (
            update(TeacherArtifact)
            .where(
                TeacherArtifact.fingerprint == fingerprint,
                TeacherArtifact.status == "building",
                TeacherArtifact.created_at < utcnow() - STALE_BUILD,
            )
            .values(created_at=utcnow(), created_by_job_id=job_id)
        )
        if rows_updated(session, stale) != 1:
            return None
        existing = session.scalars(
            select(TeacherArtifact).where(TeacherArtifact.fingerprint == fingerprint)
        ).one()
        shutil.rmtree(existing.path, ignore_errors=True)
        return ArtifactRef(existing.id, Path(existing.path), fingerprint, capture_settings)


def mark_ready(settings: Settings, ref: ArtifactRef) -> None:
    size = sum(p.stat().st_size for p in ref.path.rglob("*") if p.is_file())
    open_store(settings).upload_dir(ref.path)  # in the shared store before it is "ready"
    with session_scope(settings.resolved_database_url) as session:
        session.execute(
            update(TeacherArtifact)
            .where(TeacherArtifact.id == ref.id)
            .values(status="ready", bytes=size)
        )


def abandon(settings: Settings, ref: ArtifactRef) -> None:
    """A failed build leaves nothing behind: no row, no files."""
    with session_scope(settings.resolved_database_url) as session:
        session.execute(delete(TeacherArtifact).where(TeacherArtifact.id == ref.id))
    shutil.rmtree(ref.path, ignore_errors=True)
