"""Fair share with real processes: PostgreSQL, Redis, the uvicorn API and `celery worker`
processes. Project A floods the cpu queue before project B submits one job; one worker runs
them with a limit of one running job per project. B's job starts second, not after all of A's
(order read from started_at). A gpu-multi job needing two processes sits beside them: a worker
listening to gpu-multi but offering one process leaves it queued and says why."""

from __future__ import annotations

import pytest

from api.config import Settings
from api.projects.admin import create_project_cli
from client.serve import worker_command
from tests.support.api_client import TERMINAL, Api, distill_spec
from tests.support.servers import fresh_postgres_database, fresh_redis_url, require_real_stack
from tests.support.stack import wait_until
from tests.support.stack_fixtures import start_real_stack

pytestmark = pytest.mark.realstack
A_JOBS = 4


def test_one_project_flooding_does_not_starve_another(
    tmp_path, model_root, stack_logs, tiny_teacher, jsonl_file
):
    require_real_stack()
    with fresh_postgres_database() as database_url:
        stack, api_a = start_real_stack(
            tmp_path, model_root, stack_logs, database_url=database_url,
            broker_url=fresh_redis_url(), DISTILL_PROJECT_MAX_RUNNING_JOBS="1",
        )  # fmt: skip
        made = create_project_cli("b", Settings(DATABASE_URL=database_url))
        api_b = Api(stack.url, made["api_key"])
        spec_a = distill_spec(api_a.register(tiny_teacher), api_a.upload_dataset(jsonl_file),
                              max_steps=4, checkpoint_every=0)  # fmt: skip
        spec_b = distill_spec(api_b.register(tiny_teacher), api_b.upload_dataset(jsonl_file),
                              max_steps=4, checkpoint_every=0)  # fmt: skip
        # All messages wait in Redis before any worker runs: A's four, then B's one.
        a_ids = [api_a.call("POST", "/v1/jobs", 201, json=spec_a)["id"] for _ in range(A_JOBS)]
        b_id = api_b.call("POST", "/v1/jobs", 201, json=spec_b)["id"]
        multi = dict(spec_b, resources={"queue": "gpu-multi", "nproc": 2})
        multi_id = api_b.call("POST", "/v1/jobs", 201, json=multi)["id"]

        stack.start_worker("worker-cpu")  # -Q cpu,gpu; one process (--pool solo)
        stack._start("worker-multi", worker_command("gpu-multi"))  # offers nproc 1 (default)

        jobs = {j: api_a.wait_status(j, TERMINAL, timeout=600) for j in a_ids}
        jobs[b_id] = api_b.wait_status(b_id, TERMINAL, timeout=60)
        assert all(j["status"] == "succeeded" and j["attempts"] == 1 for j in jobs.values())
        started = sorted(jobs, key=lambda j: jobs[j]["started_at"])
        assert started == [a_ids[0], b_id, *a_ids[1:]], "B's job waited for A's flood"

        def multi_left_queued() -> str | None:
            messages = [e["message"] for e in api_b.events(multi_id)]
            return next((m for m in messages if "needs nproc 2" in m), None)

        said = wait_until(multi_left_queued, timeout=60, what="the gpu-multi job's event")
        assert said.endswith("it needs nproc 2; this worker offers 1"), said
        assert api_b.job(multi_id)["status"] == "queued"
        me = api_b.call("GET", "/v1/projects/me")
        assert (me["effective_max_running_jobs"], me["running_jobs"]) == (1, 0)
        stack.stop()
