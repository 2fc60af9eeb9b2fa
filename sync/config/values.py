"""Values a jobs.yaml is made of: durations, URLs that must be https, names and limits, and the drivers
warehouse URLs need. Nothing here repeats a secret URL or a password back."""

from __future__ import annotations

import ipaddress
import math
import re
from datetime import timedelta
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from sync.model import PROFILE_TRAITS

DEFAULT_CONFIG = "jobs.yaml"
CONFIG_ENV = "AUDIENCE_SYNC_CONFIG"
STATE_URL_ENV = "AUDIENCE_SYNC_STATE_URL"
DEFAULT_STATE_URL = "sqlite:///audience-sync.db"

# ChartMogul API: 40 requests per second and 20 parallel connections per account (503 beyond that).
CHARTMOGUL_REQUESTS_PER_SECOND = 40.0
CHARTMOGUL_MAX_CONNECTIONS = 20
# Segment's action runtime gives a destination request 10 seconds.
DEFAULT_TIMEOUT_S = 10.0

# Keys the identify call already uses for the contact's standard traits.
RESERVED_KEYS = frozenset({*PROFILE_TRAITS, "company", "user_id", "anonymous_id"})

# The state store's columns: a job name is String(100), an audience or trait key String(200), a space id
# String(200) (sync/store/models.py). Longer ones would fail every run on PostgreSQL.
MAX_JOB_NAME = 100
MAX_KEY = 200
# The longest duration any setting takes: ten years.
MAX_DURATION = timedelta(days=3650)
# A jobs.yaml is small: more values than this, or deeper nesting, is a mistake or a YAML alias bomb.
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_DEPTH = 64
# The Python package that provides each warehouse dialect, named when its driver is missing.
DRIVER_PACKAGES = {
    "snowflake": "snowflake-sqlalchemy",
    "bigquery": "sqlalchemy-bigquery",
    "redshift": "sqlalchemy-redshift redshift_connector",
    "databricks": "databricks-sqlalchemy",
    "trino": "trino",
    "duckdb": "duckdb-engine",
    "mysql": "mysqlclient",
    "mysql+pymysql": "pymysql",
    "mariadb": "mariadb",
    "mariadb+pymysql": "pymysql",
    "mssql": "pyodbc",
    "mssql+pyodbc": "pyodbc",
    "mssql+pymssql": "pymssql",
    "oracle": "oracledb",
    "oracle+oracledb": "oracledb",
    "postgresql+psycopg2": "psycopg2-binary",
    "postgresql+pg8000": "pg8000",
    "postgresql+asyncpg": "asyncpg",
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def parse_duration(value: object) -> timedelta:
    """``45s``, ``15m``, ``2h``, ``1d`` (or a number of seconds) as a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _bounded(float(value))
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError("expected a duration such as 45s, 15m, 2h or 1d")
    return _bounded(float(match.group(1)) * _UNITS[match.group(2)])


def _bounded(seconds: float) -> timedelta:
    if not math.isfinite(seconds) or abs(seconds) > MAX_DURATION.total_seconds():
        raise ValueError(f"too long: a duration is at most {MAX_DURATION.days}d")
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _secret_url(url: SecretStr) -> SecretStr:
    check_webhook_url(url.get_secret_value())
    return url


# A URL that authorises something (a webhook): https, or http to a loopback address; never echoed back.
SecretUrl = Annotated[SecretStr, AfterValidator(_secret_url)]


def _public_url(url: str) -> str:
    check_webhook_url(url, "the endpoint")
    return url


# A URL that authorises nothing by itself (an endpoint taking a key elsewhere): https, or http to loopback.
PublicUrl = Annotated[str, AfterValidator(_public_url)]


# A job's name: it keys every table of the state store.
JobName = Annotated[str, Field(pattern=r"^[a-z0-9_-]+$", max_length=MAX_JOB_NAME)]


class FrozenModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def check_webhook_url(url: str, what: str = "the webhook URL") -> None:
    """Raise ValueError unless ``url`` is an https URL, or http to a loopback address. Never echoes the URL."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise ValueError(f"{what} is malformed") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(f"{what} must be an absolute https:// URL")
    if parts.scheme == "http" and not is_loopback(host):
        raise ValueError(f"{what} must use https:// (plain http is allowed only to loopback addresses)")


# What hosting providers hand out (Heroku, Render, Supabase: postgres://), and PostgreSQL URLs without a
# driver (SQLAlchemy's default for them, psycopg2, is not installed): psycopg 3, which is.
_POSTGRES_SCHEMES = ("postgres://", "postgresql://")


def canonical_url(url: str) -> str:
    """``url`` with a PostgreSQL scheme that names no driver (``postgres://``, ``postgresql://``) made
    ``postgresql+psycopg://``; any other URL as it is."""
    for scheme in _POSTGRES_SCHEMES:
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url.removeprefix(scheme)
    return url


def driver_problem(url: str) -> str | None:
    """Why a SQLAlchemy URL cannot be used here (malformed, or its driver is not installed); None if it can.

    Loads the dialect and imports its driver without connecting, so ``validate`` catches a missing package.
    Never echoes the URL (it may carry a password)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "not a valid SQLAlchemy URL (e.g. sqlite:///warehouse.db)"
    name = parsed.drivername
    try:
        dialect = parsed.get_dialect()
        dialect.import_dbapi()
    except (NoSuchModuleError, ImportError):
        package = DRIVER_PACKAGES.get(name) or DRIVER_PACKAGES.get(parsed.get_backend_name())
        hint = f"pip install {package}" if package else "install the package of its SQLAlchemy dialect"
        return f"no driver for {name}:// is installed ({hint})"
    return None


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """A SQLAlchemy URL with its password hidden, for messages and listings."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparseable URL)"
