"""One training process of a multi-process job, as torchrun starts it:
``python -m torch.distributed.run --standalone --nproc-per-node N -m workers.distributed_rank
<job_id> <launch.json>`` (workers/distributed_launch.py writes the launch file).

Every rank joins the process group (gloo on the CPU, nccl with its own GPU), builds the recipe
from the config the launching worker prepared and trains its share of each global batch.
Rank 0 records through the worker's ``JobRecorder`` (same lease owner) and finishes the job as
one process would: pause checkpoints, cancel, or save and register the model. Ranks > 0 record
nothing. A rank that fails exits non-zero, so torchrun stops the others and the launcher
settles the job.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from api.config import get_settings
from api.logging_setup import job_log_context
from ml.distillation.distributed import World, join_world, leave_world
from ml.distillation.recipe import DistillRecipe, RecipeConfig
from workers.distill_run import load_job, record_failure, train_and_register
from workers.distributed_launch import StopFile
from workers.runtime import JobRecorder, LeaseLost

log = logging.getLogger("workers.distributed_rank")


def main(argv: list[str]) -> int:
    job_id, launch_path = argv
    launch = json.loads(Path(launch_path).read_text())
    config = RecipeConfig.from_json(launch["config"])
    world = join_world(config.device)
    config = replace(config, device=world.device)  # cuda -> this rank's own cuda:<local rank>
    folder = Path(launch["run_dir"])
    (folder / f"rank-{world.rank}.pid").write_text(str(os.getpid()))
    resume_from = Path(launch["resume_from"]) if launch["resume_from"] else None
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {world.rank} %(message)s")
    try:
        with job_log_context(job_id=job_id):
            if world.writes:
                return _rank_zero(job_id, launch, config, resume_from, world)
            _other_rank(config, resume_from, world)
            return 0
    finally:
        leave_world(world)


def _other_rank(config: RecipeConfig, resume_from: Path | None, world: World) -> None:
    # Nothing to record: the recipe drops what ranks > 0 would report, and rank 0's stop
    # decision reaches this rank through the recipe's all-reduce of the stop flag.
    recipe = DistillRecipe(
        config,
        metrics_sink=lambda points: None,
        event_sink=lambda level, message, data: None,
        should_stop=lambda: False,
        on_checkpoint=lambda step, path: None,
        world=world,
    )
    try:
        recipe.setup(resume_from=resume_from)
        if config.fsdp and resume_from is None:
            # Rank 0 evaluates the initial student before training (distill_run.py); a sharded
            # student's forward needs every rank, so this rank evaluates beside it.
            recipe.evaluate("student")
        recipe.train()
    finally:
        recipe.cleanup()


def _rank_zero(job_id: str, launch: dict[str, object], config: RecipeConfig,
               resume_from: Path | None, world: World) -> int:  # fmt: skip
    settings = get_settings()  # the launcher passed its settings in the environment
    recorder = JobRecorder(settings, job_id, str(launch["worker_id"]))
    control = StopFile(Path(str(launch["run_dir"])) / "stop", int(str(launch["launcher_pid"])))
    job = load_job(settings, job_id)
    try:
        train_and_register(settings, job, config, recorder, control, resume_from, world)
    except LeaseLost:
        log.warning("lease on %s lost; stopping", job_id)
        return 1  # nothing to record; non-zero so torchrun stops any rank still training
    except Exception as exc:
        log.exception("job %s failed", job_id)
        record_failure(recorder, exc)
        return 1  # non-zero: torchrun stops the other ranks, which may wait in a collective
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
