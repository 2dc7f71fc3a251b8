"""A realistic config model in the seed's spirit, with the seed's rules as custom validators.

Used by the README tour, the demo service and the tests:
``confledger serve --config examples/config.yaml --model confledger.examples.app_config:AppConfig``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

__all__ = [
    "VALIDATORS",
    "AppConfig",
    "CacheConfig",
    "CrawlConfig",
    "DatabaseConfig",
    "EmbeddingConfig",
    "PerformanceConfig",
    "SecurityConfig",
    "check_performance",
    "check_provider_keys",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseConfig(_Section):
    database_url: str = "sqlite+aiosqlite:///data/app.db"
    pool_size: int = Field(10, ge=1, le=500)
    max_overflow: int = Field(5, ge=0, le=500)
    echo_queries: bool = False


class CacheConfig(_Section):
    enable_caching: bool = True
    ttl_seconds: int = Field(3600, ge=0)
    local_max_memory_mb: int = Field(100, ge=1)
    redis_url: str | None = None


class EmbeddingConfig(_Section):
    provider: Literal["openai", "fastembed"] = "fastembed"
    model: str = "BAAI/bge-small-en-v1.5"
    dimensions: int = Field(384, ge=1)
    openai_api_key: SecretStr | None = None


class CrawlConfig(_Section):
    provider: Literal["crawl4ai", "firecrawl"] = "crawl4ai"
    firecrawl_api_key: SecretStr | None = None
    max_pages: int = Field(50, ge=1)


class PerformanceConfig(_Section):
    max_concurrent_requests: int = Field(10, ge=1)
    request_timeout_seconds: float = Field(30.0, gt=0)
    max_retries: int = Field(3, ge=0)


class SecurityConfig(_Section):
    require_api_keys: bool = True
    api_key_header: str = "X-API-Key"
    allowed_origins: list[str] = Field(default_factory=lambda: ["https://docs.example.com"])
    rate_limit_per_minute: int = Field(120, ge=1)


class AppConfig(_Section):
    app_name: str = "AI Docs Vector DB"
    version: str = "1.0.0"
    debug: bool = False
    environment: Literal["development", "staging", "production"] = "development"
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    crawl: CrawlConfig = Field(default_factory=CrawlConfig)
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)


def check_provider_keys(config: AppConfig) -> dict[str, list[str]]:
    """A selected provider without its API key is an error (the seed's provider-dependency rule)."""
    errors: list[str] = []
    if config.embedding.provider == "openai" and not _has(config.embedding.openai_api_key):
        errors.append("embedding.openai_api_key: required when embedding.provider is 'openai'")
    if config.crawl.provider == "firecrawl" and not _has(config.crawl.firecrawl_api_key):
        errors.append("crawl.firecrawl_api_key: required when crawl.provider is 'firecrawl'")
    if config.security.require_api_keys and not config.security.api_key_header:
        errors.append("security.api_key_header: must be set when API keys are required")
    return {"errors": errors, "warnings": []}


def check_performance(config: AppConfig) -> dict[str, list[str]]:
    """Settings that work but are risky are warnings (the seed's performance checks)."""
    warnings: list[str] = []
    if config.performance.max_concurrent_requests > 50:
        warnings.append("performance.max_concurrent_requests above 50 may exhaust upstream rate limits")
    if config.cache.local_max_memory_mb > 1000:
        warnings.append("cache.local_max_memory_mb above 1000 MB may starve the process of memory")
    if config.environment == "production" and config.debug:
        warnings.append("debug is on in production")
    return {"errors": [], "warnings": warnings}


def _has(secret: SecretStr | None) -> bool:
    return secret is not None and bool(secret.get_secret_value().strip())


VALIDATORS: list[Any] = [check_provider_keys, check_performance]
