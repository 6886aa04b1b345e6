#!/bin/sh
# Bring the database schema up to date, then serve the API. `exec` makes uvicorn PID 1 so it
# receives the container's SIGTERM and shuts down cleanly.
set -eu

alembic -c "${ALEMBIC_CONFIG:-alembic.ini}" upgrade head
exec uvicorn api.app:app --host 0.0.0.0 --port 8000 "$@"
