"""What a distill spec with ``teacher.remote`` must satisfy, checked when the job is created (a
422 naming the field) -- and the host allow-list, checked again by the worker before it sends
any token.

A remote teacher answers with its top-k log-probabilities per position and each token's own
log-probability; nothing else of its distribution crosses the wire. So it serves the sparse
forward KL (``fkl``, offline or ``onpolicy``: the top-k path of the teacher-logit cache) and
``opd`` (``rkl``: the sampled token's log-probability), in one vocabulary shared with the
student. Cross-vocabulary losses would need text mapping (left out), ``seqkd``/``skd`` need
teacher generations, a sampled cache needs the full distribution.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from api.config import Settings
from api.errors import field_error
from api.jobs.spec import DistillSpec, RemoteTeacherSpec
from api.jobs.spec_method import CROSS_VOCAB_LOSSES, TeacherCacheSpec

REMOTE_FITS = {"fkl": ("offline", "onpolicy"), "rkl": ("opd",)}


def allowed_hosts(settings: Settings) -> frozenset[str]:
    hosts = settings.remote_teacher_allowed_hosts.split(",")
    return frozenset(h.strip().lower().strip("[]") for h in hosts) - {""}


def host_allowed(url: str, settings: Settings) -> bool:
    """Whether the URL's host is listed in ``DISTILL_REMOTE_TEACHER_ALLOWED_HOSTS`` (names or
    addresses, compared as written: the operator lists the servers jobs may send tokens to)."""
    host = (urlsplit(url).hostname or "").lower()
    return bool(host) and host in allowed_hosts(settings)


def resolve_remote_teacher(
    settings: Settings, spec: DistillSpec, remote: RemoteTeacherSpec, loc: list[str | int]
) -> dict[str, Any]:
    """The resolved teacher of a remote spec, after every check that needs no network."""
    if spec.teachers is not None:
        raise field_error(loc, "a remote teacher works alone: give it as `teacher`")
    if not host_allowed(remote.url, settings):
        host = urlsplit(remote.url).hostname
        raise field_error(
            [*loc, "url"],
            f"host {host!r} is not an allowed remote teacher host; an operator can allow it "
            "with DISTILL_REMOTE_TEACHER_ALLOWED_HOSTS",
        )
    _check_method(spec, remote)
    return {
        "id": None,
        "remote": remote.model_dump(),
        "model_type": None,
        "vocab_size": None,
        "num_layers": None,
        "tokenizer_sha256": None,
        "weights_sha256": None,
    }


def _check_method(spec: DistillSpec, remote: RemoteTeacherSpec) -> None:
    method = spec.method
    if method.loss in CROSS_VOCAB_LOSSES or method.loss not in REMOTE_FITS:
        raise field_error(
            ["body", "method", "loss"],
            f"'{method.loss}' does not work with a remote teacher, which sends top-k "
            "log-probabilities in the student's vocabulary: use 'fkl' (offline or onpolicy) "
            "or 'rkl' with data_mode 'opd'",
        )
    if method.data_mode not in REMOTE_FITS[method.loss]:
        raise field_error(
            ["body", "method", "data_mode"],
            f"with a remote teacher, '{method.loss}' works with data_mode "
            f"{' or '.join(REMOTE_FITS[method.loss])}, not '{method.data_mode}'",
        )
    if spec.training.kd_chunk_tokens:
        msg = "a remote teacher sends top-k targets: there is nothing to chunk"
        raise field_error(["body", "training", "kd_chunk_tokens"], msg)
    cache = method.teacher_cache
    if isinstance(cache, TeacherCacheSpec):
        if cache.mode != "topk":
            raise field_error(
                ["body", "method", "teacher_cache", "mode"],
                "a remote teacher's cache is a top-k capture: the server does not send the "
                "full distribution that sampling needs",
            )
        if cache.k > remote.top_k:
            raise field_error(
                ["body", "method", "teacher_cache", "k"],
                f"k {cache.k} exceeds the remote teacher's top_k {remote.top_k}",
            )


def check_remote_student(spec: DistillSpec) -> str:
    """The student's model reference: a remote teacher's vocabulary is the student's own, so
    the student must be a model with a tokenizer (a registered id or an allowed path)."""
    student = spec.student.model
    if not isinstance(student, str):
        raise field_error(
            ["body", "student", "model"],
            "with a remote teacher the student must be a model (registered id or allowed "
            "path): its tokenizer is the one the teacher is asked to share",
        )
    return student
