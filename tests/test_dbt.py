"""dbt models as sources, with a real dbt project built by real dbt-core (dbt-postgres) in the test database:
``ref`` resolves through its manifest.json to the model's relation, with no dbt at run time; an unknown,
disabled or ephemeral model is a config error naming it; `audience-sync dbt exposures` writes exposures that
dbt itself parses, depending on the models each job reads.

dbt-core 1.11 pins a pathspec older than the one mypy needs, so it lives in a virtual environment of its own:
``scripts/check.sh`` makes ``.venv-dbt``; ``AUDIENCE_SYNC_DBT`` names another dbt executable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from sync import api
from sync.config import parse_config
from sync.dev.receiver import Receiver
from sync.errors import ConfigError
from tests.conftest import _postgres_or_skip

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[1]


def dbt_executable() -> str:
    path = os.environ.get("AUDIENCE_SYNC_DBT") or str(ROOT / ".venv-dbt" / "bin" / "dbt")
    if not Path(path).exists():
        if os.environ.get("CI"):
            raise RuntimeError(f"dbt is required in CI: {path} is missing (scripts/check.sh makes it)")
        pytest.skip("dbt-core is not installed: run scripts/check.sh (or set AUDIENCE_SYNC_DBT)")
    return path


@dataclass
class Project:
    folder: Path
    schema: str
    dbt: str

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DO_NOT_TRACK": "1"}
        return subprocess.run(
            [self.dbt, *args, "--project-dir", str(self.folder), "--profiles-dir", str(self.folder)],
            capture_output=True, text=True, env=env, timeout=300, check=False,
        )  # fmt: skip

    @property
    def manifest(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.folder / "target" / "manifest.json").read_text())
        return loaded


MODELS = {
    "vip_customers.sql": "select user_id from {{ ref('raw_members') }} where audience = 'vip'",
    "plan_value.sql": "select user_id, plan as value from {{ ref('raw_plans') }}",
    "retired.sql": "{{ config(enabled=false) }} select 1 as user_id",
    "scratch.sql": "{{ config(materialized='ephemeral') }} select user_id from {{ ref('raw_members') }}",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """A dbt project with two seeds and four models, built once into a schema of its own."""
    base = make_url(_postgres_or_skip())
    dbt = dbt_executable()
    folder = tmp_path_factory.mktemp("dbt_project")
    schema = f"dbt_{uuid.uuid4().hex[:10]}"
    (folder / "dbt_project.yml").write_text(
        "name: shop\nversion: '1.0'\nprofile: shop\nmodel-paths: [models]\nseed-paths: [seeds]\n"
        "models:\n  shop:\n    +materialized: table\n"
    )
    profile = {
        "shop": {
            "target": "test",
            "outputs": {
                "test": {
                    "type": "postgres", "host": base.host or "127.0.0.1", "port": base.port or 5432,
                    "user": base.username or "postgres", "password": base.password or "",
                    "dbname": base.database or "test", "schema": schema, "threads": 2,
                }
            },
        }
    }  # fmt: skip
    (folder / "profiles.yml").write_text(yaml.safe_dump(profile))
    (folder / "seeds").mkdir()
    (folder / "seeds" / "raw_members.csv").write_text("audience,user_id\nvip,u1\nvip,u2\nbeta,u3\n")
    (folder / "seeds" / "raw_plans.csv").write_text("user_id,plan\nu1,3\nu3,7\n")
    (folder / "models").mkdir()
    for name, sql in MODELS.items():
        (folder / "models" / name).write_text(sql + "\n")
    built = Project(folder, schema, dbt)
    result = built.run("build")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    yield built
    engine = create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    engine.dispose()


def config_raw(project: Project, webhook: str, state: Path, **job: Any) -> dict[str, Any]:
    return {
        "state_url": f"sqlite:///{state}",
        "dbt": {"manifest": str(project.folder / "target" / "manifest.json")},
        "jobs": [
            {
                "name": "contacts",
                "source": {"url": _postgres_or_skip()},
                "audiences": [{"name": "VIP", "ref": "vip_customers"}],
                "traits": [{"name": "Plan", "ref": "plan_value"}],
                "destination": {"type": "chartmogul", "webhook_url": webhook, "backoff_initial": "10ms"},
                **job,
            }
        ],
    }


def test_a_ref_reads_the_model_that_dbt_built(project: Project, tmp_path: Path) -> None:
    with Receiver() as receiver:
        config = parse_config(config_raw(project, receiver.url, tmp_path / "state.db"), {}, tmp_path)
        job = config.jobs[0]
        assert job.audiences[0].query == f'SELECT * FROM "test"."{project.schema}"."vip_customers"'
        result = api.run(config, "contacts")
        bodies = receiver.accepted()
    assert result.ok and result.counts["delivered"] == 3
    traits = {body["user_id"]: dict(body["custom_attributes"]) for body in bodies}
    assert traits["u1"]["vip"] is True and traits["u1"]["plan"] == 3
    assert traits["u2"]["vip"] is True and "plan" not in traits["u2"]
    assert traits["u3"]["plan"] == 7 and "vip" not in traits["u3"]


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        ("nowhere", "audiences[0].ref: no dbt model named 'nowhere' in the manifest"),
        ("retired", "audiences[0].ref: dbt model 'retired' is disabled in the manifest"),
        ("scratch", "audiences[0].ref: dbt model 'scratch' is ephemeral: it has no relation to read"),
        ("other.vip_customers", "audiences[0].ref: no dbt model named 'other.vip_customers' in the manifest"),
    ],
)
def test_a_model_that_cannot_be_read_is_a_config_error_naming_it(
    project: Project, tmp_path: Path, ref: str, problem: str
) -> None:
    raw = config_raw(project, "https://example.com/hook", tmp_path / "state.db")
    raw["jobs"][0]["audiences"] = [{"name": "VIP", "ref": ref}]
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, {}, tmp_path)
    assert f"job 'contacts': {problem}" in str(caught.value) or problem in str(caught.value)


def test_a_ref_needs_a_readable_manifest(project: Project, tmp_path: Path) -> None:
    raw = config_raw(project, "https://example.com/hook", tmp_path / "state.db")
    raw["dbt"] = {"manifest": "target/missing.json"}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, {}, tmp_path)
    assert "dbt.manifest: no such file" in str(caught.value)
    assert "needs dbt.manifest" not in str(caught.value)  # said once, not per ref
    del raw["dbt"]
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, {}, tmp_path)
    assert "audiences[0].ref: needs dbt.manifest at the top level" in str(caught.value)


def test_exposures_are_parsed_by_dbt_and_depend_on_the_models_each_job_reads(project: Project, tmp_path: Path) -> None:
    raw = config_raw(project, "https://example.com/hook", tmp_path / "state.db")
    sql_job = {
        "name": "plan-sql",
        "source": {"url": _postgres_or_skip()},
        "traits": [{"name": "Plan", "query": f"SELECT user_id, value FROM {project.schema}.plan_value"}],
        "destination": {"type": "chartmogul", "webhook_url": "https://example.com/hook"},
    }
    files_job = {
        "name": "files",
        "audiences": [{"name": "Beta", "file": "beta.csv"}],
        "destination": {"type": "chartmogul", "webhook_url": "https://example.com/hook"},
    }
    (tmp_path / "beta.csv").write_text("user_id\nu1\n")
    raw["jobs"] += [sql_job, files_job]
    config = tmp_path / "jobs.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = project.folder / "models" / "audience_sync_exposures.yml"
    made = subprocess.run(
        [sys.executable, "-m", "sync", "--config", str(config), "dbt", "exposures", "--out", str(out),
         "--owner", "Data team", "--email", "data@example.com"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    try:
        assert made.returncode == 0, made.stderr
        assert "wrote 2 exposures" in made.stderr and "(they read no dbt model): files" in made.stderr
        parsed = project.run("parse")
        assert parsed.returncode == 0, parsed.stdout[-3000:]
        exposures = project.manifest["exposures"]
    finally:
        out.unlink(missing_ok=True)
    contacts = exposures["exposure.shop.audience_sync_contacts"]
    assert sorted(contacts["depends_on"]["nodes"]) == ["model.shop.plan_value", "model.shop.vip_customers"]
    assert contacts["owner"] == {"name": "Data team", "email": "data@example.com"}
    assert contacts["type"] == "application" and contacts["label"] == "audience-sync: contacts"
    assert exposures["exposure.shop.audience_sync_plan_sql"]["depends_on"]["nodes"] == ["model.shop.plan_value"]
    assert "example.com/hook" not in textwrap.dedent(json.dumps(exposures))
