"""Settings: environment variables with the VITASYNC_ prefix, or a `.env` file."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VITASYNC_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default="sqlite:///./vitasync.sqlite3",
        description="SQLAlchemy URL: sqlite:///file or postgresql+psycopg://user@host/db",
    )
    base_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Public address of the server; FHIR links and Location headers start here",
    )
    data_dir: Path = Field(default=Path("./var"), description="Keys, outbox and exports")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, description="Largest request body")
    default_page_size: int = Field(default=20, description="_count when a search gives none")
    max_page_size: int = Field(default=1000, description="Largest _count honoured")
    history_page_size: int = Field(default=50, description="Entries per history page")
    db_pool_size: int = Field(default=10, description="Connections per worker (PostgreSQL)")
    db_statement_timeout_ms: int = Field(
        default=15000, description="PostgreSQL statement timeout; a timeout answers 503"
    )

    # -- authentication (auth/) -------------------------------------------------------------
    access_token_seconds: int = Field(default=900, description="Lifetime of an access token")
    refresh_token_seconds: int = Field(
        default=30 * 24 * 3600, description="Lifetime of a refresh token (offline_access, login)"
    )
    authorization_code_seconds: int = Field(default=60, description="Lifetime of an OAuth code")
    account_token_seconds: int = Field(
        default=24 * 3600, description="Lifetime of e-mail verification and password reset links"
    )
    signing_key_file: Path | None = Field(
        default=None,
        description="PEM private key signing tokens; default data_dir/keys/signing.pem",
    )
    login_slow_after: int = Field(default=3, description="Failed sign-ins before each waits longer")
    login_lock_after: int = Field(default=10, description="Failed sign-ins before a lockout")
    login_lock_seconds: int = Field(default=900, description="How long a lockout lasts")
    login_window_seconds: int = Field(
        default=900, description="Failures older than this are forgotten"
    )

    @property
    def fhir_base(self) -> str:
        return self.base_url.rstrip("/") + "/fhir"


settings = Settings()
