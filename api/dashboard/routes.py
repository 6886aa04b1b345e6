"""Serves the dashboard's static files under ``/ui/`` with a strict Content-Security-Policy.

The dashboard is plain ES modules calling the same REST API as every other client; it holds no
secret and needs no auth to load (the API key is entered in the page and kept in the browser's
sessionStorage). Routing happens in the page (``/ui/#/jobs/…``), so the server only maps file
names to files, refusing anything that would leave the static folder.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from api.errors import NotFound, problem_responses

STATIC_ROOT = (Path(__file__).parent / "static").resolve()

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

# No inline script or style, nothing from another origin, no framing, no plugins: API strings
# can only ever reach the page as text, and a stray injection has nowhere to load code from.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Small files that change with the code: revalidate rather than serve a stale module.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def static_file(relative: str) -> Path:
    """The file under the static root that ``relative`` names, or NotFound.

    Refuses absolute paths, ``..`` and links that resolve outside the root, and unknown
    extensions (so every response has a content type chosen here, never guessed).
    """
    candidate = (STATIC_ROOT / relative).resolve()
    if (
        not candidate.is_relative_to(STATIC_ROOT)
        or not candidate.is_file()
        or candidate.suffix not in CONTENT_TYPES
    ):
        raise NotFound(f"No dashboard file {relative!r}.")
    return candidate


def _serve(relative: str) -> Response:
    path = static_file(relative)
    return FileResponse(path, media_type=CONTENT_TYPES[path.suffix], headers=SECURITY_HEADERS)


@router.get("/", response_class=RedirectResponse)
def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui", response_class=RedirectResponse)
def ui_without_slash() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/", responses=problem_responses(NotFound))
def index() -> Response:
    return _serve("index.html")


@router.get("/ui/{relative:path}", responses=problem_responses(NotFound))
def asset(relative: str) -> Response:
    return _serve(relative)
