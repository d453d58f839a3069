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

    @property
    def fhir_base(self) -> str:
        return self.base_url.rstrip("/") + "/fhir"


settings = Settings()
