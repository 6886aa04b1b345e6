"""SQLAlchemy 2.0 ORM shared by the API and the workers. Never imports ``api``."""

from models.base import Base, new_id, utcnow
from models.tables import (
    ApiKey,
    Checkpoint,
    Dataset,
    IdempotencyKey,
    Job,
    JobEvent,
    Metric,
    Model,
    Project,
    TeacherArtifact,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)

__all__ = [
    "ApiKey",
    "Base",
    "Checkpoint",
    "Dataset",
    "IdempotencyKey",
    "Job",
    "JobEvent",
    "Metric",
    "Model",
    "Project",
    "TeacherArtifact",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "new_id",
    "utcnow",
]
