#!/bin/sh
# One Celery worker process per container (and per GPU): the solo pool runs tasks in this very
# process, so CUDA is never initialised in a prefork parent and then forked. `exec` makes
# celery PID 1, so SIGTERM starts a warm shutdown; an interrupted job resumes from its last
# checkpoint on another worker (acks_late + reject_on_worker_lost).
set -eu

exec celery -A workers.celery_app worker --pool solo --concurrency 1 \
    -Q "${WORKER_QUEUES:-cpu}" --loglevel INFO "$@"
