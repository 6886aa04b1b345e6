"""Property-based tests of the two parsers that take arbitrary user input: the job spec and the
JSONL validator. Whatever arrives, the answer is a documented 4xx or a success, never a crash."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.datasets.validation import JsonlValidator

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),  # fmt: skip
    max_leaves=12,
)
SPEC_KEYS = ["kind", "teacher", "teachers", "student", "dataset", "method", "training",
             "evaluation", "resources", "routing", "metadata", "name"]  # fmt: skip
SPECS = st.dictionaries(st.sampled_from(SPEC_KEYS), JSON_VALUES, max_size=8).map(
    lambda d: {"kind": "distill", **d} if d.get("kind") is None else d
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(st.binary(max_size=60) | JSON_VALUES.map(json.dumps).map(str.encode),
                      max_size=8))  # fmt: skip
def test_jsonl_validator_never_raises(lines: list[bytes]) -> None:
    validator = JsonlValidator()
    for line in lines:
        validator.feed(line.replace(b"\n", b" "))
    assert validator.rows + validator.error_count <= len(lines)
    assert all(err.line >= 1 for err in validator.errors)


def test_job_spec_parser_answers_4xx_never_5xx(api, auth) -> None:
    seen: set[int] = set()

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(spec=SPECS | JSON_VALUES)
    def post(spec: object) -> None:
        response = api.client.post("/v1/jobs", headers=auth, json=spec)
        seen.add(response.status_code)
        assert response.status_code in (201, 413, 422), response.text
        if response.status_code == 422:
            body = response.json()
            assert body["status"] == 422 and body["detail"]

    post()
    assert 422 in seen


def test_a_body_that_is_not_json_is_a_422_problem(api, auth) -> None:
    headers = {**auth, "content-type": "application/json"}
    for body in (b"{not json", b"\xff\xfe", b"", b"[1, 2"):
        response = api.client.post("/v1/jobs", headers=headers, content=body)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
