"""Process settings of the gateway (environment variables prefixed ``QUANTGATE_``)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUANTGATE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    connect_timeout_s: float = 5.0
    # LLM answers take long: the read timeout bounds the silence between two chunks.
    read_timeout_s: float = 600.0
    admin_key: SecretStr | None = Field(
        None, description="Bearer key for /admin/*; unset: admin routes answer loopback only."
    )
