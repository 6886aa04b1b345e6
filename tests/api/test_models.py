from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest


def test_register_local_records_architecture_and_sizes(api, auth, tiny_teacher):
    response = api.client.post("/v1/models", headers=auth, json={"path": str(tiny_teacher)})
    assert response.status_code == 201, response.text
    body = response.json()
    config = json.loads((tiny_teacher / "config.json").read_text())
    assert body["architecture"] == "LlamaForCausalLM" and body["model_type"] == "llama"
    assert body["vocab_size"] == config["vocab_size"]
    assert body["num_layers"] == config["num_hidden_layers"]
    assert body["num_parameters"] > 10_000 and len(body["tokenizer_sha256"]) == 64


def test_relative_path_resolves_under_the_root(api, auth, tiny_teacher):
    response = api.client.post("/v1/models", headers=auth, json={"path": tiny_teacher.name})
    assert response.status_code == 201, response.text
    assert response.json()["path"] == str(tiny_teacher)


@pytest.mark.parametrize(
    "path, message",
    [
        ("/etc", "must lie under a configured model root"),
        ("../models/tiny-teacher", "must not contain '..'"),
        ("does-not-exist", "is not a directory"),
    ],
)
def test_paths_outside_the_roots_are_refused(api, auth, tiny_teacher, path, message):
    response = api.client.post("/v1/models", headers=auth, json={"path": path})
    assert response.status_code == 422
    problem = response.json()
    assert problem["errors"][0]["loc"] == ["body", "path"]
    assert message in problem["detail"]


def test_symlink_escaping_the_root_is_refused(api, auth, model_root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    link = model_root / f"escape-{tmp_path.name}"
    link.symlink_to(outside)
    response = api.client.post("/v1/models", headers=auth, json={"path": str(link)})
    assert response.status_code == 422 and "model root" in response.json()["detail"]


def test_symlinked_file_leaving_the_root_is_refused(api, auth, model_root, tiny_teacher, tmp_path):
    copy = model_root / f"sneaky-{tmp_path.name}"
    shutil.copytree(tiny_teacher, copy)
    (tmp_path / "secret").write_text("x")
    (copy / "notes.txt").symlink_to(tmp_path / "secret")
    response = api.client.post("/v1/models", headers=auth, json={"path": str(copy)})
    assert response.status_code == 422 and "symlink" in response.json()["detail"]


def test_pickle_weights_and_remote_code_are_refused(api, auth, model_root, tiny_teacher, tmp_path):
    pickled = model_root / f"pickled-{tmp_path.name}"
    shutil.copytree(tiny_teacher, pickled)
    for weights in pickled.glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    response = api.client.post("/v1/models", headers=auth, json={"path": str(pickled)})
    assert response.status_code == 422 and "safetensors" in response.json()["detail"]

    response = api.client.post(
        "/v1/models", headers=auth, json={"path": str(tiny_teacher), "trust_remote_code": True}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "trust_remote_code"]


def _tar_of(directory: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        archive.add(directory, arcname=directory.name)
    return buf.getvalue()


def test_upload_archive_then_download_round_trips(api, auth, tiny_teacher, tmp_path):
    response = api.client.post(
        "/v1/models/upload",
        headers=auth,
        files={"file": ("teacher.tar.gz", _tar_of(tiny_teacher))},
        data={"name": "uploaded"},
    )
    assert response.status_code == 201, response.text
    model = response.json()
    assert model["source"] == "upload" and model["name"] == "uploaded"
    download = api.client.get(f"/v1/models/{model['id']}/download", headers=auth)
    assert download.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as archive:
        archive.extractall(tmp_path / "out", filter="data")
    (extracted,) = (tmp_path / "out").iterdir()
    assert (extracted / "config.json").read_bytes() == (tiny_teacher / "config.json").read_bytes()


def test_upload_with_escaping_member_is_refused_and_leaves_nothing(api, auth, test_base):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    models_dir = test_base / "home" / "artifacts" / "models"
    before = sorted(models_dir.iterdir()) if models_dir.exists() else []
    response = api.client.post(
        "/v1/models/upload", headers=auth, files={"file": ("evil.tar.gz", buf.getvalue())}
    )
    assert response.status_code == 422
    after = sorted(models_dir.iterdir()) if models_dir.exists() else []
    assert after == before
    assert not (test_base / "home" / "artifacts" / "evil.txt").exists()


def test_other_projects_models_are_invisible(api, auth, tiny_teacher):
    model = api.client.post("/v1/models", headers=auth, json={"path": str(tiny_teacher)}).json()
    other = api.new_project("other")
    other.pop("project_id")
    assert api.client.get(f"/v1/models/{model['id']}", headers=other).status_code == 404
    assert api.client.get(f"/v1/models/{model['id']}/download", headers=other).status_code == 404
