"""jobs.yaml: loading, environment expansion and validation.

Every problem is collected and reported at once, each naming its job and field; nothing here ever
repeats the webhook URL or a database password back, because error messages end up in logs.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from sync.config.dbt import Manifest, ref_query
from sync.config.destinations import DESTINATION_MODELS, DESTINATION_TYPES, ChartMogulApiConfig
from sync.config.jobs import (
    WAREHOUSE_DIALECTS,
    ComputationConfig,
    Config,
    DbtConfig,
    JobConfig,
    JobOutline,
    LineageConfig,
    NotifyConfig,
    Outline,
)
from sync.config.values import (
    _ENV_REF,
    CONFIG_ENV,
    DEFAULT_CONFIG,
    DEFAULT_STATE_URL,
    MAX_CONFIG_DEPTH,
    MAX_CONFIG_VALUES,
    MAX_KEY,
    RESERVED_KEYS,
    STATE_URL_ENV,
    canonical_url,
    driver_problem,
)
from sync.errors import ConfigError
from sync.model import ACCOUNT_PROFILE_COLUMNS, ACCOUNT_TRAITS, ADDRESS_TRAITS, MEMBER_FIELD, PROFILE_COLUMNS


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


class Missing:
    """Environment variables a configuration refers to that are not set, each with where it is used, so that
    each is reported once however many fields use it."""

    def __init__(self) -> None:
        self.uses: dict[str, list[str]] = {}
        self.prefix = ""  # the job being read, when one is

    def add(self, name: str, where: str) -> None:
        self.uses.setdefault(name, []).append(self.prefix + where)

    def problems(self) -> list[str]:
        return [
            f"environment variable {name} is not set (used by {', '.join(uses)}; write ${{{name}:-default}} for a "
            "default)"
            for name, uses in self.uses.items()
        ]


def expand_env(value: Any, env: Mapping[str, str], path: str, problems: list[str] | Missing) -> Any:
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
        if isinstance(problems, Missing):
            problems.add(name, path)
        else:
            problems.append(f"{path}: environment variable {name} is not set (use ${{{name}:-default}} for a default)")
        return ""

    return _ENV_REF.sub(substitute, value)


def load_config(
    path: Path | str | None = None, env: Mapping[str, str] | None = None, only: Collection[str] | None = None
) -> Config:
    """Read, expand and validate a jobs.yaml; raise ConfigError listing every problem. With ``only``, just
    those jobs are read (and must exist): a command acting on one job needs none of the others' secrets."""
    env = os.environ if env is None else env
    config_path = Path(path or env.get(CONFIG_ENV) or DEFAULT_CONFIG)
    return parse_config(_read_yaml(config_path), env, base_dir=config_path.resolve().parent, only=only)


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
            problems += [_problem(label, e, JobOutline) for e in exc.errors()]
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


def parse_config(raw: object, env: Mapping[str, str], base_dir: Path, only: Collection[str] | None = None) -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["the configuration must be a mapping with state_url and jobs"])
    problems: list[str] = []
    missing = Missing()
    jobs_raw = raw.get("jobs") or []
    if not isinstance(jobs_raw, list):
        problems.append("jobs: must be a list of jobs")
        jobs_raw = []
    names = [item.get("name") for item in jobs_raw if isinstance(item, dict)]
    problems += [
        f"no job named {name!r} in the configuration (jobs: {_listed(names)})"
        for name in only or ()
        if name not in names
    ]
    expanded = expand_env({k: v for k, v in raw.items() if k != "jobs"}, env, "", missing)
    if env.get(STATE_URL_ENV):
        expanded["state_url"] = env[STATE_URL_ENV]
    notify = _parse_notify(expanded.pop("notify", None) or [], {n for n in names if isinstance(n, str)}, problems)
    lineage = _parse_section("lineage", expanded.pop("lineage", None) or _lineage_env(env), LineageConfig, problems)
    dbt = _parse_section("dbt", expanded.pop("dbt", None), DbtConfig, problems)
    context = _JobContext(base_dir, lineage, _manifest(dbt, base_dir, problems), dbt_given=dbt is not None)
    jobs = [
        job
        for index, item in enumerate(jobs_raw)
        if (only is None or (isinstance(item, dict) and item.get("name") in only))
        and (job := _parse_job(index, item, env, context, problems, missing))
    ]
    top = _parse_top(expanded, problems)
    problems += _duplicate_job_names(jobs_raw)
    problems = missing.problems() + problems
    if problems:
        raise ConfigError(problems)
    state_url = resolve_sqlite_url(top.get("state_url", DEFAULT_STATE_URL), base_dir)
    return Config(
        state_url=state_url, jobs=tuple(jobs), notify=tuple(notify), base_dir=base_dir, lineage=lineage, dbt=dbt
    )


@dataclass(frozen=True)
class _JobContext:
    """What a job's settings are read with: the folder of jobs.yaml, the top level's lineage, the dbt manifest
    (None: none configured, or one that could not be read, already reported)."""

    base_dir: Path
    lineage: LineageConfig | None
    manifest: Manifest | None
    dbt_given: bool = False


_Section = TypeVar("_Section", LineageConfig, DbtConfig)


def _parse_section(name: str, raw: object, model: type[_Section], problems: list[str]) -> _Section | None:
    if raw is None:
        return None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems += [_problem(name, e, model) for e in exc.errors()]
        return None


def _lineage_env(env: Mapping[str, str]) -> dict[str, str] | None:
    """OpenLineage's standard environment: OPENLINEAGE_URL (+ OPENLINEAGE_NAMESPACE, OPENLINEAGE_API_KEY,
    OPENLINEAGE_ENDPOINT), used when jobs.yaml has no ``lineage``."""
    if not env.get("OPENLINEAGE_URL"):
        return None
    given = {
        "url": env.get("OPENLINEAGE_URL"),
        "namespace": env.get("OPENLINEAGE_NAMESPACE"),
        "api_key": env.get("OPENLINEAGE_API_KEY"),
        "endpoint": env.get("OPENLINEAGE_ENDPOINT"),
    }
    return {k: v for k, v in given.items() if v}


def _manifest(dbt: DbtConfig | None, base_dir: Path, problems: list[str]) -> Manifest | None:
    if dbt is None:
        return None
    try:
        return Manifest.load(base_dir / dbt.manifest)
    except ValueError as exc:
        problems.append(f"dbt.manifest: {exc}")
        return None


def _parse_notify(raw: object, jobs: set[str], problems: list[str]) -> list[NotifyConfig]:
    if not isinstance(raw, list):
        problems.append("notify: must be a list of notification targets")
        return []
    targets: list[NotifyConfig] = []
    for index, item in enumerate(raw):
        try:
            target = NotifyConfig.model_validate(item)
        except ValidationError as exc:
            problems += [_problem(f"notify[{index}]", e, NotifyConfig) for e in exc.errors()]
            continue
        problems += [f"notify[{index}].jobs: no job named {name!r}" for name in target.jobs if name not in jobs]
        targets.append(target)
    return targets


def _parse_top(expanded: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    unknown = sorted(set(expanded) - {"state_url"})
    problems += [
        f"{key}: unknown setting (allowed at the top level: state_url, jobs, notify, lineage, dbt)" for key in unknown
    ]
    state_url = expanded.get("state_url", DEFAULT_STATE_URL)
    if not isinstance(state_url, str):
        problems.append("state_url: must be a SQLAlchemy URL string")
        return {}
    problem = driver_problem(canonical_url(state_url))
    if problem:
        problems.append(f"state_url: {problem}")
    return {"state_url": state_url}


def _listed(names: list[Any]) -> str:
    return ", ".join(str(name) for name in names) or "none"


def _parse_job(
    index: int, raw: object, env: Mapping[str, str], context: _JobContext, problems: list[str], missing: Missing
) -> JobConfig | None:
    label = _job_label(index, raw)
    if not isinstance(raw, dict):
        problems.append(f"{label}: must be a mapping")
        return None
    missing.prefix = f"{label}: "
    unset = Missing()
    raw = expand_env(raw, env, "", unset)
    for name, uses in unset.uses.items():
        for where in uses:
            missing.add(name, where)
    missing.prefix = ""
    # Fields whose variable is missing are reported as such; what their emptiness breaks is not news.
    empty = {where for uses in unset.uses.values() for where in uses}
    try:
        job = JobConfig.model_validate(raw)
    except ValidationError as exc:
        problems += [_problem(label, error) for error in exc.errors() if _loc(error["loc"]) not in empty]
        return None
    if context.lineage is not None and isinstance(raw, dict) and "lineage" not in raw:  # its own (or null) stands
        job = job.model_copy(update={"lineage": context.lineage})
    job_problems = _check_job(job, context.base_dir)
    if context.manifest is not None or not context.dbt_given:  # an unreadable manifest is reported once
        job_problems += _ref_problems(job, context.manifest)
    problems += [f"{label}: {problem}" for problem in job_problems]
    return None if job_problems else _resolve_refs(_resolve_paths(job, context.base_dir), context.manifest)


def _check_job(job: JobConfig, base_dir: Path) -> list[str]:
    problems: list[str] = []
    seen: dict[str, str] = {}
    for section, items in (("audiences", job.audiences), ("traits", job.traits)):
        for index, item in enumerate(items):
            field = f"{section}[{index}]"
            key = item.resolved_key
            given = [name for name in ("query", "query_file", "ref", "file") if getattr(item, name) is not None]
            if len(given) != 1:
                problems.append(f"{field}: give exactly one of query, query_file, ref or file")
            if given[:1] in (["query"], ["query_file"], ["ref"]) and not job.source.url:
                problems.append(f"{field}.{given[0]}: needs source.url, the warehouse to run it against")
            if item.query_file is not None:
                problems += _sql_file_problems(f"{field}.query_file", base_dir, item.query_file)
            if item.file is not None and not (base_dir / item.file).is_file():
                problems.append(f"{field}.file: no such file: {item.file}")
            if not key:
                problems.append(f"{field}.name: {item.name!r} gives an empty key; set key explicitly")
            elif len(key) > MAX_KEY:
                problems.append(f"{field}: the key is {len(key)} characters long, over {MAX_KEY}; set a shorter key")
            elif key in RESERVED_KEYS:
                problems.append(f"{field}: key {key!r} is a standard contact field; set another key")
            elif job.subject == "account" and key in ACCOUNT_RESERVED_KEYS:
                problems.append(f"{field}: key {key!r} is a standard account field; set another key")
            elif key in seen:
                problems.append(f"{field}: key {key!r} is already used by {seen[key]}")
            else:
                seen[key] = field
    standard = ACCOUNT_PROFILE_COLUMNS if job.subject == "account" else PROFILE_COLUMNS
    for index, column in enumerate(job.enrich):
        field = f"enrich[{index}]"
        if column in standard or column == MEMBER_FIELD:
            problems.append(f"{field}: {column!r} is a standard profile column; it is sent without enrich")
        elif column in seen:
            problems.append(f"{field}: {column!r} is already the key of {seen[column]}")
        elif column in job.enrich[:index]:
            problems.append(f"{field}: {column!r} is listed twice")
    if job.enrich and not _has_profiles(job):
        problems.append("enrich: needs source.profiles (or profiles_file), the query that returns those columns")
    if job.subject == "account":
        problems += _account_problems(job)
    if job.send_profile_changes and job.destination.events == "track":
        problems.append("send_profile_changes: a profile change is sent in an identify call; use events: both")
    if job.send_profile_changes and not _has_profiles(job):
        problems.append("send_profile_changes: needs source.profiles (or profiles_file)")
    if job.source.profiles is not None and not job.source.url:
        problems.append("source.profiles: needs source.url, the warehouse to run it against")
    if job.schedule.when_changed is not None and not job.source.url:
        problems.append("schedule.when_changed: needs source.url, the warehouse to ask")
    if job.schedule.at_least is not None and job.schedule.when_changed is None:
        problems.append("schedule.at_least: forces a run when when_changed would skip it; give when_changed too")
    profile_sources = [n for n in _PROFILE_SOURCES if getattr(job.source, n)]
    if len(profile_sources) > 1:
        problems.append(
            "source: give one of profiles (a query), profiles_query_file (a .sql file), profiles_ref (a dbt model) "
            f"or profiles_file (a data file), not {' and '.join(profile_sources)}"
        )
    if job.source.profiles_ref is not None and not job.source.url:
        problems.append("source.profiles_ref: needs source.url, the warehouse the model is in")
    if job.writeback is not None:
        problems += _writeback_problems(job)
    if job.source.profiles_query_file is not None:
        problems += _sql_file_problems("source.profiles_query_file", base_dir, job.source.profiles_query_file)
    if job.source.profiles_file is not None and not (base_dir / job.source.profiles_file).is_file():
        problems.append(f"source.profiles_file: no such file: {job.source.profiles_file}")
    if job.source.url:
        problem = driver_problem(job.source.url)
        if problem:
            problems.append(f"source.url: {problem}")
    if job.source.session and not job.source.url:
        problems.append("source.session: needs source.url, the warehouse whose sessions it sets up")
    if job.source.engine == "warehouse":
        problems += _warehouse_problems(job)
    if not seen:
        problems.append("audiences/traits: a job needs at least one audience or trait")
    return problems


_PROFILE_SOURCES = ("profiles", "profiles_query_file", "profiles_ref", "profiles_file")


def _has_profiles(job: JobConfig) -> bool:
    return any(getattr(job.source, name) for name in _PROFILE_SOURCES)


def _writeback_problems(job: JobConfig) -> list[str]:
    url = job.writeback.url if job.writeback is not None else None
    if not (url or job.source.url):
        return ["writeback.url: needs a warehouse URL (or source.url, the job's warehouse, to write to)"]
    problem = driver_problem(url) if url else None
    return [f"writeback.url: {problem}"] if problem else []


def _ref_problems(job: JobConfig, manifest: Manifest | None) -> list[str]:
    """What is wrong with the dbt models the job names, if anything."""
    refs = [
        (f"{section}[{i}].ref", item.ref)
        for section, items in (("audiences", job.audiences), ("traits", job.traits))
        for i, item in enumerate(items)
        if item.ref is not None
    ]
    if job.source.profiles_ref is not None:
        refs.append(("source.profiles_ref", job.source.profiles_ref))
    if manifest is None:
        return [f"{field}: needs dbt.manifest at the top level (the dbt project's manifest.json)" for field, _ in refs]
    problems = []
    for field, ref in refs:
        try:
            manifest.model(ref)
        except ValueError as exc:
            problems.append(f"{field}: {exc}")
    return problems


def _resolve_refs(job: JobConfig, manifest: Manifest | None) -> JobConfig:
    """Each ``ref`` read into ``query`` (``profiles_ref`` into ``profiles``): the model's relation, whole."""
    if manifest is None:
        return job

    def resolve(item: ComputationConfig) -> ComputationConfig:
        if item.ref is None:
            return item
        return item.model_copy(update={"query": ref_query(manifest.model(item.ref))})

    source = job.source
    if source.profiles_ref is not None:
        source = source.model_copy(update={"profiles": ref_query(manifest.model(source.profiles_ref))})
    return job.model_copy(
        update={
            "source": source,
            "audiences": tuple(resolve(a) for a in job.audiences),
            "traits": tuple(resolve(t) for t in job.traits),
        }
    )


def _warehouse_problems(job: JobConfig) -> list[str]:
    """What the warehouse engine needs: a warehouse it runs on, and every result a query against it."""
    if not job.source.url:
        return ["source.engine: warehouse needs source.url, the warehouse the diff runs in"]
    problems = []
    try:
        backend = make_url(job.source.url).get_backend_name()
    except ArgumentError:
        backend = None  # reported with source.url
    if backend is not None and backend not in WAREHOUSE_DIALECTS:
        problems.append(
            f"source.engine: the warehouse engine runs on {', '.join(WAREHOUSE_DIALECTS)}, not {backend}; "
            "use engine: local"
        )
    for section, items in (("audiences", job.audiences), ("traits", job.traits)):
        for index, item in enumerate(items):
            if item.file is not None:
                problems.append(f"{section}[{index}].file: the warehouse engine reads queries only; give a query")
    if job.source.profiles_file is not None:
        problems.append("source.profiles_file: the warehouse engine reads queries only; give source.profiles")
    return problems


# What a group call's traits already carry: an account key may not be one of them.
ACCOUNT_RESERVED_KEYS = frozenset(
    {*ACCOUNT_TRAITS, *ACCOUNT_TRAITS.values(), *ADDRESS_TRAITS, "address", "group_id", MEMBER_FIELD}
)


def _account_problems(job: JobConfig) -> list[str]:
    """What an account job's destination cannot do with group calls."""
    destination = job.destination
    problems = []
    if destination.events != "identify":
        problems.append("destination.events: an account job sends group calls; track events are for user jobs")
    if isinstance(destination, ChartMogulApiConfig) and destination.target != "customer":
        problems.append("destination.target: an account job writes to ChartMogul customers; set target: customer")
    return problems


def _sql_file_problems(field: str, base_dir: Path, name: str) -> list[str]:
    """What is wrong with a query file, if anything: missing, unreadable, not UTF-8 text, or empty."""
    path = base_dir / name
    if not path.is_file():
        return [f"{field}: no such file: {name} (paths are relative to the folder of jobs.yaml)"]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return [f"{field}: {name} is not UTF-8 text"]
    except OSError as exc:
        return [f"{field}: cannot read {name}: {exc.strerror}"]
    return [] if text.strip() else [f"{field}: {name} holds no query"]


def _sql(base_dir: Path, name: str) -> str:
    return (base_dir / name).read_text(encoding="utf-8").strip().rstrip(";").strip()


def _resolve_paths(job: JobConfig, base_dir: Path) -> JobConfig:
    """Files made absolute, and each query file's query read into ``query`` (``profiles``), so that a run
    reads the SQL as it was when the configuration loaded."""

    def resolve(item: ComputationConfig) -> ComputationConfig:
        if item.query_file is not None:
            return item.model_copy(update={"query": _sql(base_dir, item.query_file)})
        if item.file is None:
            return item
        return item.model_copy(update={"file": str((base_dir / item.file).resolve())})

    source = job.source
    if source.profiles_query_file:
        source = source.model_copy(update={"profiles": _sql(base_dir, source.profiles_query_file)})
    if source.url:
        source = source.model_copy(update={"url": resolve_sqlite_url(source.url, base_dir)})
    if source.profiles_file:
        source = source.model_copy(update={"profiles_file": str((base_dir / source.profiles_file).resolve())})
    writeback = job.writeback
    if writeback is not None and writeback.url:
        writeback = writeback.model_copy(update={"url": resolve_sqlite_url(writeback.url, base_dir)})
    return job.model_copy(
        update={
            "writeback": writeback,
            "source": source,
            "audiences": tuple(resolve(a) for a in job.audiences),
            "traits": tuple(resolve(t) for t in job.traits),
        }
    )


def resolve_sqlite_url(url: str, base_dir: Path) -> str:
    """Make a relative SQLite path in a URL relative to the configuration file's folder (and a PostgreSQL
    URL that names no driver one that names psycopg: ``canonical_url``)."""
    url = canonical_url(url)
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


def _problem(label: str, error: ErrorDetails, model: type[BaseModel] = JobConfig) -> str:
    """One validation error in the product's words: ``job 'x': field: what is wrong``."""
    return f"{label}: {_loc(error['loc'])}: {_message(error, model)}"


def _message(error: ErrorDetails, model: type[BaseModel]) -> str:
    kind, loc, given = error["type"], error["loc"], error.get("input")
    if kind == "extra_forbidden":
        allowed = _settings_at(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.7)
        hint = f"; did you mean {close[0]}?" if close else (f" (allowed: {', '.join(allowed)})" if allowed else "")
        return f"unknown setting{hint}"
    if kind == "missing":
        return "required, and not given"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping of settings (name: value), not {_kind_of(given)}"
    if kind == "destination_type":
        named = given.get("type") if isinstance(given, dict) else given
        return f"unknown destination type {named!r}; use one of {', '.join(DESTINATION_TYPES)}"
    message = error["msg"].removeprefix("Value error, ")
    if message.startswith("Input should be "):
        message = "must be " + message.removeprefix("Input should be ")
        if message.startswith("must be a valid "):  # not pydantic's detail of how parsing failed
            message = message.split(",", 1)[0]
        if not _secret_field(loc) and isinstance(given, str | int | float | bool) and len(str(given)) <= 60:
            message += f", not {given!r}"
    return message


def _settings_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The settings the model at ``loc`` of ``model`` takes (by their names in jobs.yaml)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if part in DESTINATION_TYPES:
            current = DESTINATION_MODELS[part]
            continue
        fields = current.model_fields if isinstance(current, type) and issubclass(current, BaseModel) else {}
        field = fields.get(part) or next((f for f in fields.values() if f.alias == part), None)
        if field is None:
            return []
        current = _model_in(field.annotation)
    if not (isinstance(current, type) and issubclass(current, BaseModel)):
        return []
    return sorted(field.alias or name for name, field in current.model_fields.items())


def _model_in(annotation: Any) -> Any:
    """The model an annotation holds (``X``, ``tuple[X, ...]``, ``X | None``); the destination union is
    resolved by its tag, later in the location."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _kind_of(value: Any) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    return "nothing" if value is None else f"a {type(value).__name__}"


def _secret_field(loc: tuple[int | str, ...]) -> bool:
    return any(word in str(part) for part in loc for word in ("url", "key", "secret", "password", "token"))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "syntax error"
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else str(problem)
