"""How the dashboard is served (no browser needed): content types, the strict CSP, redirects,
no file outside the static folder, and no HTML built from strings in its scripts."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.dashboard.routes import STATIC_ROOT


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    from api.app import create_app

    with TestClient(create_app(), follow_redirects=False) as client:
        yield client


def test_root_and_ui_redirect_to_the_dashboard(client: TestClient) -> None:
    for path in ("/", "/ui"):
        response = client.get(path)
        assert response.status_code == 307 and response.headers["location"] == "/ui/"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
        ("/ui/js/main.js", "text/javascript; charset=utf-8"),
        ("/ui/js/views/job.js", "text/javascript; charset=utf-8"),
    ],
)
def test_files_have_their_content_type_and_a_strict_csp(
    client: TestClient, path: str, content_type: str
) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    ["/ui/../app.py", "/ui/%2e%2e/routes.py", "/ui/..%2Froutes.py", "/ui/js/nothing.js",
     "/ui/js", "/ui/%2Fetc%2Fpasswd"],
)  # fmt: skip
def test_nothing_outside_the_static_folder_is_served(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert "def " not in response.text and "root:" not in response.text


def test_the_page_has_no_inline_script_or_style() -> None:
    html = (STATIC_ROOT / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S)
    assert scripts and all('src="/ui/' in attrs and not body.strip() for attrs, body in scripts)
    assert " style=" not in html and "<style" not in html
    assert not re.search(r"\son[a-z]+=", html)


def test_scripts_never_parse_strings_as_html_or_code() -> None:
    forbidden = re.compile(
        r"\.(innerHTML|outerHTML)\b|insertAdjacentHTML|document\.write|\beval\(|new Function|"
        r"setAttribute\(\s*['\"](style|on)"
    )
    scripts = sorted(STATIC_ROOT.rglob("*.js"))
    assert len(scripts) >= 5
    offenders = [
        f"{p.name}: {m.group(0)}" for p in scripts for m in forbidden.finditer(p.read_text())
    ]
    assert offenders == []
