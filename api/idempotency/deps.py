"""The ``Idempotency-Key`` dependency for creating POST routes.

Use it in three lines (see ``api/jobs/routes.py``)::

    @router.post("/things", response_model=ThingOut, status_code=201)
    def create_thing(..., idempotency: IdempotencyDep) -> Response:
        row = service.create(...)
        return idempotency.respond(ThingOut.model_validate(row), status_code=201)

With no header the dependency does nothing and ``respond`` is a plain JSON response. With a
header, a repeated request never reaches the route: its stored response is sent again with
``Idempotent-Replayed: true``. The fingerprint is sha256 over the method, the path with its
query and the raw body; for form and multipart bodies, over every field name and value and
every uploaded file's name and content, streamed from the spooled upload.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from api.deps import CallerDep, SessionDep, SettingsDep
from api.idempotency import service
from api.idempotency.service import HEADER, REPLAY_HEADER, IdempotentReplay
from models import IdempotencyKey

_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
_CHUNK = 1 << 20


def _framed(digest: Any, part: bytes) -> None:
    """Length-prefixed, so field boundaries cannot be shifted to collide."""
    digest.update(len(part).to_bytes(8, "big"))
    digest.update(part)


async def request_fingerprint(request: Request) -> str | None:
    """sha256 of what makes two requests "the same"; None when no key was sent."""
    if HEADER.lower() not in request.headers:
        return None
    digest = hashlib.sha256()
    _framed(digest, request.method.encode())
    _framed(digest, request.url.path.encode())
    _framed(digest, request.url.query.encode())
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(_FORM_TYPES):
        form = await request.form()  # already parsed by FastAPI: cached on the request
        for name, value in form.multi_items():
            _framed(digest, name.encode())
            if isinstance(value, UploadFile):
                _framed(digest, (value.filename or "").encode())
                await value.seek(0)
                while chunk := await value.read(_CHUNK):
                    digest.update(chunk)
                await value.seek(0)
                _framed(digest, b"end-of-file")
            else:
                _framed(digest, value.encode())
    else:
        _framed(digest, await request.body())
    return digest.hexdigest()


@dataclass
class Idempotency:
    session: Session
    row: IdempotencyKey | None
    responded: bool = False

    def respond(self, content: Any, *, status_code: int = 200) -> Response:
        """The JSON response for ``content``; with a key, stored beside the created object."""
        response = JSONResponse(jsonable_encoder(content), status_code=status_code)
        if self.row is not None:
            service.record_response(
                session=self.session,
                row=self.row,
                status=status_code,
                content_type=response.media_type or "application/json",
                body=bytes(response.body),
            )
        self.responded = True
        return response


def get_idempotency(
    request: Request,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    fingerprint: Annotated[str | None, Depends(request_fingerprint)],
) -> Iterator[Idempotency]:
    key = request.headers.get(HEADER)
    if key is None or fingerprint is None:
        yield Idempotency(session=session, row=None)
        return
    row = service.claim(
        session=session,
        project_id=caller.project_id,
        key=key,
        request_hash=fingerprint,
        method=request.method,
        path=request.url.path,
        ttl_hours=settings.idempotency_ttl_hours,
    )
    idempotency = Idempotency(session=session, row=row)
    yield idempotency
    if not idempotency.responded:  # a route that forgot respond() must not store a blank key
        raise RuntimeError(f"{request.url.path} took an Idempotency-Key but never responded")


IdempotencyDep = Annotated[Idempotency, Depends(get_idempotency, scope="function")]


def install_replay_handler(app: FastAPI) -> None:
    async def on_replay(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, IdempotentReplay)
        return Response(
            content=exc.body,
            status_code=exc.status,
            media_type=exc.content_type,
            headers={REPLAY_HEADER: "true"},
        )

    app.add_exception_handler(IdempotentReplay, on_replay)
