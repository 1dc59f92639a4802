"""Process settings of the gateway (environment variables prefixed ``QUANTGATE_``)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUANTGATE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    connect_timeout_s: float = Field(5.0, gt=0, description="to a backend")
    first_byte_timeout_s: float = Field(
        600.0, gt=0, description="request sent -> response headers (prefill, queueing)"
    )
    idle_timeout_s: float = Field(120.0, gt=0, description="longest silence between two chunks")
    admin_key: SecretStr | None = Field(
        None, description="Bearer key for /admin/*; unset: admin routes answer loopback only."
    )
    redis_url: SecretStr | None = Field(
        None,
        description="redis://... shared by every gateway replica for rate limits and quotas; "
        "unset: limits live in this process.",
    )
    ledger_url: SecretStr | None = Field(
        None,
        description="Usage ledger: postgresql://... or sqlite:///path; "
        "unset: <cache_dir>/usage.sqlite3.",
    )
    ledger_batch_rows: int = Field(500, ge=1, description="rows per database write, at most")
    ledger_flush_interval_s: float = Field(0.1, gt=0, description="a batch gathers this long")
    ledger_max_pending: int = Field(
        100_000, ge=1, description="queued rows beyond which new rows are dropped and counted"
    )
