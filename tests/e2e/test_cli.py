"""The `distill` CLI and SDK against a real `distill serve`: what the README shows a user."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from client.errors import DistillAPIError
from client.sdk import DistillClient
from tests.e2e.conftest import credentials, distill_spec
from tests.support.stack import ROOT


def test_cli_drives_a_job_from_upload_to_download(tmp_path, embedded_stack, tiny_teacher,
                                                 jsonl_file):  # fmt: skip
    stack, api = embedded_stack

    def distill(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "client.cli", "--json", *args],
            cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": 3}\n')
    refused = distill("datasets", "upload", str(bad))
    assert refused.returncode == 2
    assert "line 2" in refused.stderr and "response" in refused.stderr

    dataset = json.loads(distill("datasets", "upload", str(jsonl_file)).stdout)
    teacher = json.loads(distill("models", "register", str(tiny_teacher)).stdout)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(distill_spec(teacher["id"], dataset["id"], max_steps=6)))
    watched = distill("jobs", "create", "-f", str(spec_file), "--watch")
    assert watched.returncode == 0, watched.stderr
    job = json.loads(watched.stdout)
    assert job["status"] == "succeeded"

    metrics = json.loads(distill("jobs", "metrics", job["id"], "--key", "train/loss").stdout)
    assert [m["step"] for m in metrics] == list(range(1, 7))
    downloaded = distill("jobs", "download", job["id"], str(tmp_path / "student"))
    assert downloaded.returncode == 0, downloaded.stderr
    assert (tmp_path / "student" / "config.json").exists()
    assert list((tmp_path / "student").glob("*.safetensors"))

    with DistillClient(base_url=stack.url, api_key=credentials(tmp_path / "home")) as client:
        listed = list(client.list_jobs(metadata={}))
        assert [j["id"] for j in listed] == [job["id"]]
        with pytest.raises(DistillAPIError) as finished:
            client.cancel_job(job["id"])
        assert finished.value.status == 409
        assert client.get_model(job["output_model_id"])["source_job_id"] == job["id"]
