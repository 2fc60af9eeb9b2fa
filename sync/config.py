"""jobs.yaml: loading, environment expansion and validation.

Every problem is collected and reported at once, each naming its job and field; nothing here ever
repeats the webhook URL or a database password back, because error messages end up in logs.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from apscheduler.triggers.cron import CronTrigger
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from sync.errors import ConfigError
from sync.keys import snake_case
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


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceConfig(_Frozen):
    url: str | None = None
    profiles: str | None = None  # a query against url
    profiles_file: str | None = None  # or a CSV / Parquet file with the profile columns

    def redacted_url(self) -> str:
        return redact_url(self.url) if self.url else "(none)"


class ComputationConfig(_Frozen):
    """An audience (``query``/``file`` yields member ``user_id`` rows) or a trait (``user_id, value`` rows)."""

    name: str = Field(min_length=1)
    key: str | None = None
    # Engage's computation_id (``aud_…`` / ``tra_…``), to keep the one a Segment workspace already knows;
    # a stable one is derived from the job and the key otherwise.
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$", max_length=MAX_KEY)
    query: str | None = None
    file: str | None = None

    @field_validator("key")
    @classmethod
    def _key_shape(cls, key: str | None) -> str | None:
        if key is not None and not re.fullmatch(r"[a-z0-9][a-z0-9_]*", key):
            raise ValueError("a key is lower-case letters, digits and underscores, e.g. vip_customers")
        return key

    @property
    def resolved_key(self) -> str:
        return self.key or snake_case(self.name)


class HttpDestinationConfig(_Frozen):
    """What every HTTP destination takes: its pace, its patience and when an update is given up."""

    requests_per_second: float = Field(default=CHARTMOGUL_REQUESTS_PER_SECOND, gt=0, allow_inf_nan=False)
    max_connections: int = Field(default=CHARTMOGUL_MAX_CONNECTIONS, ge=1, le=1000)
    timeout: Duration = timedelta(seconds=DEFAULT_TIMEOUT_S)
    # Attempts per request within one run; what is still failing waits for the next run.
    max_attempts: int = Field(default=5, ge=1, le=50)
    # Runs in which the destination rejects the same update (400, 404, 422…) before it is parked as dead.
    dead_after: int = Field(default=5, ge=1, le=1000)
    backoff_initial: Duration = timedelta(seconds=1)
    backoff_max: Duration = timedelta(seconds=60)


class ChartMogulWebhookConfig(HttpDestinationConfig):
    """ChartMogul (Actions) "Send Contact": one identify call per POST to the webhook URL (no batching).

    The rate and connection defaults are ChartMogul's API limits (40 requests/s, 20 connections per
    account); whether the webhook shares them is undocumented, so both are settings.
    """

    type: Literal["chartmogul"] = "chartmogul"
    webhook_url: SecretUrl
    calls: Literal["per_user"] = "per_user"  # one coalesced identify per user: the body has one custom_attributes


# Segment's HTTP Tracking API (docs, "HTTP Tracking API"; analytics-python's consumer):
SEGMENT_ENDPOINT = "https://api.segment.io/v1/batch"
# a batch is at most 500 KB; analytics-python stops at 475,000 bytes, leaving room for what is added last;
SEGMENT_MAX_REQUEST_BYTES = 475_000
# at most 2,500 calls in a batch;
SEGMENT_MAX_CALLS = 2_500
# one call at most 32 KB (400 for the whole batch otherwise);
SEGMENT_MAX_CALL_BYTES = 32 * 1024
# keep well under ~1,000 requests/s per workspace (429 with Retry-After beyond): every request carries up to
# 2,500 calls, so 20 requests/s over 4 connections is tens of thousands of calls a second.
SEGMENT_REQUESTS_PER_SECOND = 20.0
SEGMENT_MAX_CONNECTIONS = 4


class SegmentConfig(HttpDestinationConfig):
    """Segment's HTTP Tracking API ``/v1/batch``, or any service that speaks it (RudderStack, Jitsu…)."""

    type: Literal["segment"]
    write_key: SecretStr = Field(min_length=1)  # sent as the basic-auth user; as secret as a webhook URL
    endpoint: PublicUrl = SEGMENT_ENDPOINT
    # per_computation: one identify per changed audience or trait, as Engage sends them; per_user coalesces.
    calls: Literal["per_computation", "per_user"] = "per_computation"
    integrations: dict[str, Any] = Field(default_factory=lambda: {"All": True})
    requests_per_second: float = Field(default=SEGMENT_REQUESTS_PER_SECOND, gt=0, allow_inf_nan=False)
    max_connections: int = Field(default=SEGMENT_MAX_CONNECTIONS, ge=1, le=1000)


# The destination types; pydantic names the one an error is about in its path, which _loc leaves out.
DESTINATION_TYPES = ("chartmogul", "segment")


def _destination_type(raw: Any) -> str:
    """The tag of a destination: its ``type``, ``chartmogul`` when left out (the first destination)."""
    if isinstance(raw, Mapping):
        return str(raw.get("type", "chartmogul"))
    return str(getattr(raw, "type", "chartmogul"))


DestinationConfig = Annotated[
    Annotated[ChartMogulWebhookConfig, Tag("chartmogul")] | Annotated[SegmentConfig, Tag("segment")],
    Discriminator(
        _destination_type,
        custom_error_type="destination_type",
        custom_error_message=f"unknown destination type; use one of {', '.join(DESTINATION_TYPES)}",
    ),
]


class GuardConfig(_Frozen):
    """The mass-change guard (see ``sync.guard``); ``run --force`` overrides it for one run."""

    enabled: bool = True
    exit_share: float = Field(
        default=0.5, gt=0, le=1, allow_inf_nan=False
    )  # more than this share of an audience exiting stops the run
    min_members: int = Field(default=100, ge=1)  # ... for audiences of at least this many acknowledged members
    block_empty: bool = True  # an audience whose snapshot comes back empty where it had members stops the run


class ScheduleConfig(_Frozen):
    """Either ``every`` (+ ``jitter``), counted from the end of the last run, or a ``cron`` expression."""

    every: Duration = timedelta(hours=2)
    jitter: Duration = timedelta(hours=1)
    cron: str | None = None
    timezone: str = "UTC"
    enabled: bool = True

    @field_validator("every")
    @classmethod
    def _positive(cls, every: timedelta) -> timedelta:
        if every.total_seconds() <= 0:
            raise ValueError("must be longer than zero")
        return every

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {zone!r} (use an IANA name such as Europe/Berlin)") from None
        return zone

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str | None) -> str | None:
        if cron is not None:
            try:
                CronTrigger.from_crontab(cron, timezone="UTC")
            except ValueError as exc:
                raise ValueError(f"not a valid cron expression: {exc}") from None
        return cron


class JobConfig(_Frozen):
    name: JobName
    space_id: str | None = Field(default=None, max_length=MAX_KEY)
    source: SourceConfig = SourceConfig()
    audiences: tuple[ComputationConfig, ...] = ()
    traits: tuple[ComputationConfig, ...] = ()
    destination: DestinationConfig
    schedule: ScheduleConfig = ScheduleConfig()
    guard: GuardConfig = GuardConfig()
    audit_retention_days: int = Field(default=30, ge=1)  # per-update audit rows older than this are pruned

    def audience_keys(self) -> list[str]:
        return [audience.resolved_key for audience in self.audiences]

    def trait_keys(self) -> list[str]:
        return [trait.resolved_key for trait in self.traits]


class JobOutline(BaseModel):
    """What the control and audit commands need of a job: its name, schedule and retention, not its secrets."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: JobName
    schedule: ScheduleConfig = ScheduleConfig()
    audit_retention_days: int = Field(default=30, ge=1)


class Outline(_Frozen):
    state_url: str
    jobs: tuple[JobOutline, ...] = ()

    def job(self, name: str) -> JobOutline:
        return _named(self.jobs, name)


# What an alert can be about (README, Operations).
ALERT_CONDITIONS = ("failed", "unreachable", "blocked", "failed_share", "failing", "user_count_change")


class NotifyConfig(_Frozen):
    """Where alerts go: a generic JSON webhook, or a Slack-compatible incoming webhook (``{"text": ...}``)."""

    type: Literal["webhook", "slack"]
    url: SecretUrl  # as secret as a destination's webhook URL
    jobs: tuple[str, ...] = ()  # only these jobs; all when empty
    on: tuple[Literal["failed", "unreachable", "blocked", "failed_share", "failing", "user_count_change"], ...] = (
        ALERT_CONDITIONS  # type: ignore[assignment]
    )
    failed_share: float = Field(default=0.1, gt=0, le=1, allow_inf_nan=False)  # of a run's answered updates
    user_count_change: float = Field(default=0.5, gt=0, le=100, allow_inf_nan=False)  # vs the last 5 runs' median
    timeout: Duration = timedelta(seconds=5)


_Job = TypeVar("_Job", JobConfig, JobOutline)


class Config(_Frozen):
    state_url: str = DEFAULT_STATE_URL
    jobs: tuple[JobConfig, ...] = ()
    notify: tuple[NotifyConfig, ...] = ()
    base_dir: Path = Path(".")

    def job(self, name: str) -> JobConfig:
        return _named(self.jobs, name)


def _named(jobs: tuple[_Job, ...], name: str) -> _Job:
    """The job called ``name``; a ConfigError listing the jobs there are otherwise."""
    for job in jobs:
        if job.name == name:
            return job
    known = ", ".join(job.name for job in jobs) or "none"
    raise ConfigError([f"no job named {name!r} in the configuration (jobs: {known})"])


def check_webhook_url(url: str, what: str = "the webhook URL") -> None:
    """Raise ValueError unless ``url`` is an https URL, or http to a loopback address. Never echoes the URL."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise ValueError(f"{what} is malformed") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(f"{what} must be an absolute https:// URL")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ValueError(f"{what} must use https:// (plain http is allowed only to loopback addresses)")


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


def _is_loopback(host: str) -> bool:
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


def check_size(value: Any) -> None:
    """Raise ConfigError for a tree with more than ``MAX_CONFIG_VALUES`` values or nested deeper than
    ``MAX_CONFIG_DEPTH``: YAML aliases can make a small file stand for billions of values."""
    count = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError([f"the configuration holds more than {MAX_CONFIG_VALUES:,} values (YAML aliases?)"])
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError([f"the configuration nests deeper than {MAX_CONFIG_DEPTH} levels"])
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


def expand_env(value: Any, env: Mapping[str, str], path: str, problems: list[str]) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML tree; ``$$`` is a ``$``."""
    if isinstance(value, dict):
        return {
            key: expand_env(item, env, f"{path}.{key}" if path else str(key), problems) for key, item in value.items()
        }
    if isinstance(value, list):
        return [expand_env(item, env, f"{path}[{index}]", problems) for index, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if default is not None and not env.get(name):
            return default  # as in the shell, ${VAR:-default} also replaces an empty value
        if name in env:
            return env[name]
        problems.append(f"{path}: environment variable {name} is not set (use ${{{name}:-default}} for a default)")
        return ""

    return _ENV_REF.sub(substitute, value)


def load_config(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate a jobs.yaml; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    config_path = Path(path or env.get(CONFIG_ENV) or DEFAULT_CONFIG)
    return parse_config(_read_yaml(config_path), env, base_dir=config_path.resolve().parent)


def load_state_url(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> str:
    """Only the state store's URL: what the audit commands need, without the jobs' secrets."""
    env = os.environ if env is None else env
    config_path = Path(path or env.get(CONFIG_ENV) or DEFAULT_CONFIG)
    return _state_url(None if env.get(STATE_URL_ENV) else _read_yaml(config_path), env, config_path)


def _state_url(raw: Any, env: Mapping[str, str], config_path: Path) -> str:
    """The state store's URL from the environment's override or the parsed file ``raw``."""
    if env.get(STATE_URL_ENV):
        return resolve_sqlite_url(env[STATE_URL_ENV], config_path.resolve().parent)
    problems: list[str] = []
    state_url = expand_env(
        raw.get("state_url", DEFAULT_STATE_URL) if isinstance(raw, dict) else None, env, "state_url", problems
    )
    if not isinstance(state_url, str):
        problems.append("state_url: must be a SQLAlchemy URL string")
    if problems:
        raise ConfigError(problems)
    try:
        return resolve_sqlite_url(state_url, config_path.resolve().parent)
    except ArgumentError:
        raise ConfigError(["state_url: not a valid SQLAlchemy URL (e.g. sqlite:///audience-sync.db)"]) from None


def load_outline(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Outline:
    """The state store and each job's name, schedule and retention: what ``status``, ``pause``, ``resume``,
    ``skip`` and ``prune`` need. Environment variables the rest of a job refers to (its webhook URL, its
    warehouse password) need not be set."""
    env = os.environ if env is None else env
    config_path = Path(path or env.get(CONFIG_ENV) or DEFAULT_CONFIG)
    raw = _read_yaml(config_path)
    state_url = _state_url(raw, env, config_path)
    jobs_raw = raw.get("jobs") if isinstance(raw, dict) else None
    problems: list[str] = []
    jobs: list[JobOutline] = []
    for index, item in enumerate(jobs_raw if isinstance(jobs_raw, list) else []):
        label = _job_label(index, item)
        if not isinstance(item, dict):
            problems.append(f"{label}: must be a mapping")
            continue
        wanted = {k: item[k] for k in ("name", "schedule", "audit_retention_days") if k in item}
        try:
            jobs.append(JobOutline.model_validate(expand_env(wanted, env, "", problems)))
        except ValidationError as exc:
            problems += [f"{label}: {_loc(e['loc'])}: {_message(e['type'], e['msg'])}" for e in exc.errors()]
    if problems:
        raise ConfigError(problems)
    return Outline(state_url=state_url, jobs=tuple(jobs))


def _read_yaml(config_path: Path) -> Any:
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{config_path}: cannot read the configuration ({exc.strerror})"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{config_path}: not UTF-8 text (byte {exc.start + 1} is {exc.object[exc.start]:#04x})"]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{config_path}: not valid YAML: {_yaml_problem(exc)}"]) from None
    except RecursionError:
        raise ConfigError([f"{config_path}: the configuration nests deeper than {MAX_CONFIG_DEPTH} levels"]) from None
    check_size(raw)
    return raw


def parse_config(raw: object, env: Mapping[str, str], base_dir: Path) -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["the configuration must be a mapping with state_url and jobs"])
    problems: list[str] = []
    expanded = expand_env(raw, env, "", problems)
    if env.get(STATE_URL_ENV):
        expanded["state_url"] = env[STATE_URL_ENV]
    jobs_raw = expanded.pop("jobs", None) or []
    if not isinstance(jobs_raw, list):
        problems.append("jobs: must be a list of jobs")
        jobs_raw = []
    jobs = [job for index, item in enumerate(jobs_raw) if (job := _parse_job(index, item, base_dir, problems))]
    notify = _parse_notify(expanded.pop("notify", None) or [], {job.name for job in jobs}, problems)
    top = _parse_top(expanded, problems)
    problems += _duplicate_job_names(jobs_raw)
    if problems:
        raise ConfigError(problems)
    state_url = resolve_sqlite_url(top.get("state_url", DEFAULT_STATE_URL), base_dir)
    return Config(state_url=state_url, jobs=tuple(jobs), notify=tuple(notify), base_dir=base_dir)


def _parse_notify(raw: object, jobs: set[str], problems: list[str]) -> list[NotifyConfig]:
    if not isinstance(raw, list):
        problems.append("notify: must be a list of notification targets")
        return []
    targets: list[NotifyConfig] = []
    for index, item in enumerate(raw):
        try:
            target = NotifyConfig.model_validate(item)
        except ValidationError as exc:
            problems += [f"notify[{index}]: {_loc(e['loc'])}: {_message(e['type'], e['msg'])}" for e in exc.errors()]
            continue
        problems += [f"notify[{index}].jobs: no job named {name!r}" for name in target.jobs if name not in jobs]
        targets.append(target)
    return targets


def _parse_top(expanded: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    unknown = sorted(set(expanded) - {"state_url"})
    problems += [f"{key}: unknown setting (allowed at the top level: state_url, jobs, notify)" for key in unknown]
    state_url = expanded.get("state_url", DEFAULT_STATE_URL)
    if not isinstance(state_url, str):
        problems.append("state_url: must be a SQLAlchemy URL string")
        return {}
    problem = driver_problem(state_url)
    if problem:
        problems.append(f"state_url: {problem}")
    return {"state_url": state_url}


def _parse_job(index: int, raw: object, base_dir: Path, problems: list[str]) -> JobConfig | None:
    label = _job_label(index, raw)
    if not isinstance(raw, dict):
        problems.append(f"{label}: must be a mapping")
        return None
    try:
        job = JobConfig.model_validate(raw)
    except ValidationError as exc:
        problems += [
            f"{label}: {_loc(error['loc'])}: {_message(error['type'], error['msg'])}" for error in exc.errors()
        ]
        return None
    job_problems = _check_job(job, base_dir)
    problems += [f"{label}: {problem}" for problem in job_problems]
    return None if job_problems else _resolve_paths(job, base_dir)


def _check_job(job: JobConfig, base_dir: Path) -> list[str]:
    problems: list[str] = []
    seen: dict[str, str] = {}
    for section, items in (("audiences", job.audiences), ("traits", job.traits)):
        for index, item in enumerate(items):
            field = f"{section}[{index}]"
            key = item.resolved_key
            if (item.query is None) == (item.file is None):
                problems.append(f"{field}: give exactly one of query or file")
            if item.query is not None and not job.source.url:
                problems.append(f"{field}.query: needs source.url, the warehouse to run it against")
            if item.file is not None and not (base_dir / item.file).is_file():
                problems.append(f"{field}.file: no such file: {item.file}")
            if not key:
                problems.append(f"{field}.name: {item.name!r} gives an empty key; set key explicitly")
            elif len(key) > MAX_KEY:
                problems.append(f"{field}: the key is {len(key)} characters long, over {MAX_KEY}; set a shorter key")
            elif key in RESERVED_KEYS:
                problems.append(f"{field}: key {key!r} is a standard contact field; set another key")
            elif key in seen:
                problems.append(f"{field}: key {key!r} is already used by {seen[key]}")
            else:
                seen[key] = field
    if job.source.profiles is not None and not job.source.url:
        problems.append("source.profiles: needs source.url, the warehouse to run it against")
    if job.source.profiles is not None and job.source.profiles_file is not None:
        problems.append("source: give profiles (a query) or profiles_file, not both")
    if job.source.profiles_file is not None and not (base_dir / job.source.profiles_file).is_file():
        problems.append(f"source.profiles_file: no such file: {job.source.profiles_file}")
    if job.source.url:
        problem = driver_problem(job.source.url)
        if problem:
            problems.append(f"source.url: {problem}")
    if not seen:
        problems.append("audiences/traits: a job needs at least one audience or trait")
    return problems


def _resolve_paths(job: JobConfig, base_dir: Path) -> JobConfig:
    def resolve(item: ComputationConfig) -> ComputationConfig:
        if item.file is None:
            return item
        return item.model_copy(update={"file": str((base_dir / item.file).resolve())})

    source = job.source
    if source.url:
        source = source.model_copy(update={"url": resolve_sqlite_url(source.url, base_dir)})
    if source.profiles_file:
        source = source.model_copy(update={"profiles_file": str((base_dir / source.profiles_file).resolve())})
    return job.model_copy(
        update={
            "source": source,
            "audiences": tuple(resolve(a) for a in job.audiences),
            "traits": tuple(resolve(t) for t in job.traits),
        }
    )


def resolve_sqlite_url(url: str, base_dir: Path) -> str:
    """Make a relative SQLite path in a URL relative to the configuration file's folder."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return url
    if Path(parsed.database).is_absolute() or parsed.database.startswith("file:"):
        return url
    return parsed.set(database=str((base_dir / parsed.database).resolve())).render_as_string(hide_password=False)


def _duplicate_job_names(jobs_raw: list[Any]) -> list[str]:
    names = [item.get("name") for item in jobs_raw if isinstance(item, dict)]
    duplicates = sorted({name for name in names if isinstance(name, str) and names.count(name) > 1})
    return [f"job {name!r}: the job name is used more than once" for name in duplicates]


def _job_label(index: int, raw: object) -> str:
    name = raw.get("name") if isinstance(raw, dict) else None
    return f"job {name!r}" if isinstance(name, str) and name else f"jobs[{index}]"


def _loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for index, part in enumerate(loc):
        if index and loc[index - 1] == "destination" and part in DESTINATION_TYPES:
            continue
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(job)"


def _message(kind: str, message: str) -> str:
    if kind == "extra_forbidden":
        return "unknown setting"
    return message.removeprefix("Value error, ")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "syntax error"
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else str(problem)
