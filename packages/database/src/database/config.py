"""Settings, from the environment (pydantic-settings).

``DATABASE_URL`` selects the server; without it the embedded PostgreSQL under the
data folder is used (see ``database.embedded``). The password is held as a secret:
it never appears in a repr, a log line or an error message.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url

# packages/database/src/database/config.py -> the repository root.
PROJECT_ROOT = Path(__file__).resolve().parents[4]

_DRIVER = "postgresql+psycopg"
_ACCEPTED_SCHEMES = {
    "postgres",
    "postgresql",
    "postgresql+psycopg",
    "postgresql+psycopg2",
    "postgresql+asyncpg",
    "postgresql+psycopg_async",
}


class InvalidDatabaseURL(ValueError):
    """DATABASE_URL is not a PostgreSQL URL this package can use."""


def normalise_url(raw: str) -> URL:
    """Parse a PostgreSQL URL and point it at the psycopg 3 driver.

    ``postgres://`` (Heroku, Supabase) and ``postgresql://`` are both accepted.
    """
    try:
        url = make_url(raw.strip())
    except Exception as exc:  # sqlalchemy.exc.ArgumentError, ValueError
        raise InvalidDatabaseURL("DATABASE_URL is not a valid URL") from exc
    if url.drivername not in _ACCEPTED_SCHEMES:
        raise InvalidDatabaseURL(
            f"DATABASE_URL must be a PostgreSQL URL (postgresql://...), not {url.drivername}://"
        )
    return url.set(drivername=_DRIVER)


class DatabaseSettings(BaseSettings):
    # hide_input_in_errors: a refused DATABASE_URL must not echo its password.
    model_config = SettingsConfigDict(extra="ignore", env_file=None, hide_input_in_errors=True)

    database_url: SecretStr | None = Field(default=None, alias="DATABASE_URL")
    echo: bool = Field(default=False, alias="DB_ECHO")
    pool_size: int = Field(default=20, alias="DB_POOL_SIZE", ge=1)
    max_overflow: int = Field(default=10, alias="DB_MAX_OVERFLOW", ge=0)
    pool_pre_ping: bool = Field(default=True, alias="DB_POOL_PRE_PING")
    #: With pre-ping on: ping a pooled connection only when it has been idle in the
    #: pool longer than this (seconds); 0 (the default) pings at every checkout. A
    #: connection handed back a moment ago is then used again without the round trip,
    #: at a price: one that died meanwhile (a restart of the server quicker than this)
    #: fails its next statement instead of being replaced.
    pool_pre_ping_idle_s: float = Field(default=0.0, alias="DB_POOL_PRE_PING_IDLE_S", ge=0)
    pool_timeout_s: float = Field(default=30.0, alias="DB_POOL_TIMEOUT", gt=0)
    statement_timeout_ms: int = Field(default=30_000, alias="DB_STATEMENT_TIMEOUT_MS", ge=0)
    lock_timeout_ms: int = Field(default=5_000, alias="DB_LOCK_TIMEOUT_MS", ge=0)
    data_dir: Path = Field(default=PROJECT_ROOT / ".data", alias="AUTOML_DATA_DIR")
    embedded_dbname: str = Field(default="automl", alias="AUTOML_EMBEDDED_DB")
    #: Where uploads, Parquet files and models live (shared with the API and the
    #: workers): a folder, default ``<data folder>/storage``, or an fsspec URL.
    storage_url: str | None = Field(default=None, alias="STORAGE_URL")

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return SecretStr(normalise_url(value.get_secret_value()).render_as_string(False))

    def url(self) -> URL:
        """The URL to connect to; starts the embedded server when none is configured.

        A ``URL``'s repr and str mask the password.
        """
        if self.database_url is not None:
            return normalise_url(self.database_url.get_secret_value())
        from database.embedded import embedded_url

        return embedded_url(self.data_dir, self.embedded_dbname)

    def storage_location(self) -> str:
        return self.storage_url or str(self.data_dir / "storage")

    @property
    def uses_embedded(self) -> bool:
        return self.database_url is None

    def connect_options(self) -> str:
        """libpq ``options``: per-session timeouts, so no statement or lock waits forever."""
        return (
            f"-c statement_timeout={self.statement_timeout_ms}"
            f" -c lock_timeout={self.lock_timeout_ms}"
        )


@lru_cache(maxsize=1)
def get_settings() -> DatabaseSettings:
    return DatabaseSettings()
