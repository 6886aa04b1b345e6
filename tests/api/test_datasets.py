from __future__ import annotations

import json
from pathlib import Path


def _upload(api, auth, path: Path, name: str | None = None):
    data = {"name": name} if name else None
    with path.open("rb") as fh:
        return api.client.post(
            "/v1/datasets", headers=auth, files={"file": (path.name, fh)}, data=data
        )


def test_upload_stores_rows_hash_and_format(api, auth, jsonl_file, test_base):
    response = _upload(api, auth, jsonl_file, name="train")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["rows"] == 400 and body["format"] == "prompt_response" and body["name"] == "train"
    import hashlib

    assert body["sha256"] == hashlib.sha256(jsonl_file.read_bytes()).hexdigest()
    stored = test_base / "home" / "data" / body["sha256"][:2] / f"{body['sha256']}.jsonl"
    assert stored.read_bytes() == jsonl_file.read_bytes()
    assert api.client.get(f"/v1/datasets/{body['id']}", headers=auth).json() == body


def test_chat_format_is_accepted(api, auth, tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(3)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    response = _upload(api, auth, path)
    assert response.status_code == 201 and response.json()["format"] == "chat"


def test_bad_lines_are_named_and_nothing_is_stored(api, auth, tmp_path, test_base):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"prompt": "a", "response": "b"}\n'
        '{"prompt": "a"}\n'
        "{not json\n"
        '{"messages": [{"role": "user", "content": "x"}]}\n'
    )
    data_root = test_base / "home" / "data"
    before = sorted(p.name for p in data_root.rglob("*.jsonl")) if data_root.exists() else []
    response = _upload(api, auth, path)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["detail"].startswith("line 2: response: field required")
    assert [e["line"] for e in problem["errors"]] == [2, 3, 4]
    assert problem["errors"][2]["loc"] == ["file", "line 4", "messages[0].role"]
    after = sorted(p.name for p in data_root.rglob("*.jsonl"))
    assert after == before
    assert not list((data_root / "tmp").glob("*.part"))
    assert api.client.get("/v1/datasets", headers=auth).json()["items"] == []


def test_empty_file_is_rejected(api, auth, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    response = _upload(api, auth, path)
    assert response.status_code == 422 and "no rows" in response.json()["detail"]


def test_oversized_upload_is_413(api, auth, tmp_path, monkeypatch):
    from api.config import get_settings

    monkeypatch.setattr(get_settings(), "max_upload_bytes", 100)
    path = tmp_path / "big.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n' * 20)
    response = _upload(api, auth, path)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert api.client.get("/v1/datasets", headers=auth).json()["items"] == []


def test_other_projects_datasets_are_invisible(api, auth, jsonl_file):
    mine = _upload(api, auth, jsonl_file).json()
    other = api.new_project("other")
    other.pop("project_id")
    assert api.client.get(f"/v1/datasets/{mine['id']}", headers=other).status_code == 404
    assert api.client.get("/v1/datasets", headers=other).json()["items"] == []


def test_pagination_walks_every_row_once(api, auth, tmp_path):
    ids = []
    for i in range(5):
        path = tmp_path / f"d{i}.jsonl"
        path.write_text(json.dumps({"prompt": f"p{i}", "response": "r"}) + "\n")
        ids.append(_upload(api, auth, path).json()["id"])
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.client.get("/v1/datasets", headers=auth, params=params).json()
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
