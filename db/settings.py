"""One settings object for the service, read from SECATEURS_* environment variables (SPEC.md)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SECATEURS_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".secateurs")
    database_url: str | None = None  # default: SQLite under home
    broker_url: str | None = None  # default: an embedded broker (SQLite under home)
    storage_url: str | None = None  # default: file:// under home
    s3_endpoint_url: str | None = None
    max_upload_bytes: int = 2 * 1024**3
    job_soft_time_limit: int = Field(6 * 3600, ge=1)
    job_time_limit: int | None = Field(None, ge=1)  # default: the soft limit + 300 s
    # address space one job may add to the process running it (GiB) when its spec's limits.memory_gb is null;
    # null: 60% of the machine's memory (pruning/limits.py)
    job_memory_gb: float | None = Field(None, gt=0)
    webhook_allow_private: bool = False
    job_lease_seconds: int = 60  # a running job whose heartbeat is older than this is taken back
    job_max_attempts: int = 3
    sweep_interval_seconds: float = 15.0
    # stored files no row names (a commit that failed after its file was written) are deleted this often (db/orphans.py)
    orphan_sweep_interval_seconds: float = Field(3600.0, gt=0)
    orphan_grace_seconds: float = Field(3600.0, ge=0)  # a model or dataset file younger than this is never an orphan
    # how long a job waits for object storage (reading its inputs, storing its results) before it fails saying so
    storage_retry_seconds: float = Field(120.0, ge=0)
    # how long a job that finished waits for the database to record its result before leaving it to its lease
    record_retry_seconds: float = Field(600.0, ge=0)
    max_active_jobs_per_tenant: int = 20  # queued + running; more answer 429 with Retry-After
    max_storage_bytes_per_tenant: int = Field(100 * 1024**3, ge=0)  # models + datasets + artifacts; past it 413
    max_uploads_per_minute_per_tenant: int = Field(60, ge=0)  # models + datasets begun; past it 429, Retry-After
    artifact_url_seconds: int = Field(300, ge=1, le=7 * 24 * 3600)  # presigned artifact URLs live at most this long
    api_key_cache_seconds: float = 5.0  # a verified key is trusted this long per API process; 0 = always look up

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'secateurs.db'}"

    @property
    def broker(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.home / 'broker.db'}"

    @property
    def storage(self) -> str:
        return self.storage_url or f"file://{self.home / 'storage'}"

    @property
    def hard_time_limit(self) -> int:
        """When the pool kills a job's process: a while after the soft limit, which lets the job fail cleanly.
        Follows a lowered soft limit unless set itself."""
        return max(self.job_time_limit or self.job_soft_time_limit + 300, self.job_soft_time_limit + 1)

    @property
    def embedded(self) -> bool:
        return self.broker.startswith("sqla+")

    def ensure_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "tmp").mkdir(exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    s = Settings()
    s.ensure_home()
    return s
