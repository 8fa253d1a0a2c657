"""Process settings, read from the environment (and an optional `.env` file).

Secrets (Stripe keys, platform tokens) live only here, in the environment; brand files name the
environment variables that hold a brand's platform tokens and never hold a secret themselves.
"""

from __future__ import annotations

import glob
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///flashtag.db"
DEFAULT_BRANDS = "config/brands/*.toml"


class Settings(BaseSettings):
    """Everything a flashtag process reads from its environment."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    database_url: str = Field(DEFAULT_DATABASE_URL, alias="DATABASE_URL")
    stripe_secret_key: SecretStr | None = Field(None, alias="STRIPE_SECRET_KEY")
    stripe_webhook_secret: SecretStr | None = Field(None, alias="STRIPE_WEBHOOK_SECRET")
    public_url: str = Field("http://127.0.0.1:8000", alias="PUBLIC_URL")
    brands: str = Field(DEFAULT_BRANDS, alias="FLASHTAG_BRANDS")
    link_secret: SecretStr | None = Field(
        None,
        alias="FLASHTAG_LINK_SECRET",
        description="HMAC key for buyer links (top-up and status pages).",
    )

    def brand_paths(self) -> list[Path]:
        """The brand files named by `FLASHTAG_BRANDS`: comma-separated paths or globs."""
        paths: list[Path] = []
        for pattern in (p.strip() for p in self.brands.split(",")):
            if not pattern:
                continue
            if glob.has_magic(pattern):
                # A pattern that matches nothing names no file (e.g. run from another folder).
                paths.extend(Path(m) for m in sorted(glob.glob(pattern)))
            else:
                paths.append(Path(pattern))  # a missing file is reported by the loader
        return paths


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
