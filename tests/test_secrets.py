"""The webhook URL and database passwords never appear in logs, errors, listings or the state store."""

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import MetaData, create_engine, select
from sqlalchemy.engine import make_url

from sync.dev.receiver import Action, Receiver
from tests.conftest import Warehouse

TOKEN = "wh-s3cret-9f8e7d"
PASSWORD = "db-pa55-c4fe"


def state_url_with_password(state_url: str) -> str:
    """Trust authentication ignores the password, so the store works while its URL carries a secret."""
    url = make_url(state_url)
    return url.set(password=PASSWORD).render_as_string(hide_password=False) if url.drivername != "sqlite" else state_url


def every_text_in(state_url: str) -> str:
    engine = create_engine(state_url)
    metadata = MetaData()
    metadata.reflect(engine)
    texts = []
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            texts += [repr(tuple(row)) for row in connection.execute(select(table))]
    engine.dispose()
    return "\n".join(texts)


def test_no_secret_anywhere_after_runs_with_failures(
    tmp_path: Path, state_url: str, warehouse: Warehouse, faulty_receiver: Receiver
) -> None:
    warehouse.set_profiles([{"user_id": f"u{i}", "email": f"person{i}@example.com"} for i in range(8)])
    warehouse.set_members("vip", [f"u{i}" for i in range(8)])

    def some_fail(body: Mapping[str, Any]) -> Action:
        return {"u1": 422, "u2": 503, "u3": "drop"}.get(body["user_id"])  # type: ignore[return-value]

    faulty_receiver.faults.respond = some_fail
    url = state_url_with_password(state_url)
    webhook = faulty_receiver.url.replace("/webhook", f"/webhook/{TOKEN}")
    config = tmp_path / "jobs.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "state_url": url,
                "jobs": [
                    {
                        "name": "contacts",
                        "source": {"url": warehouse.url, "profiles": "SELECT user_id, email FROM profiles"},
                        "audiences": [warehouse.audience("VIP", "vip")],
                        "destination": {
                            "webhook_url": "${HOOK}",
                            "max_attempts": 2,
                            "backoff_initial": "10ms",
                            "backoff_max": "10ms",
                        },
                    },
                    {
                        "name": "broken",
                        "source": {"url": f"postgresql+psycopg://reader:{PASSWORD}@127.0.0.1:1/w"},
                        "audiences": [{"name": "VIP", "query": "SELECT 1"}],
                        "destination": {"webhook_url": "${HOOK}"},
                    },
                ],
            }
        )
    )
    env = {**os.environ, "HOOK": webhook}
    env.pop("AUDIENCE_SYNC_STATE_URL", None)

    def cli(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "sync", "--config", str(config), "--log-level", "debug", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        return result.stdout + result.stderr

    outputs = [
        cli("run", "contacts"),
        cli("run", "contacts", "--json"),
        cli("run", "broken"),
        cli("plan", "contacts"),
        cli("runs"),
        cli("runs", "--json"),
        cli("diff", "1"),
        cli("diff", "1", "--format", "jsonl"),
        cli("messages", "1"),
        cli("status"),
        cli("status", "--json"),
        cli("failed", "contacts", "--all"),
        cli("validate"),
        cli("--log-format", "json", "run", "contacts"),
    ]
    assert "cannot connect to the warehouse" in outputs[2]  # the failing paths were taken
    assert "HTTP 422" in outputs[7]
    everything = "\n".join(outputs) + every_text_in(url)
    if make_url(state_url).drivername == "sqlite":
        everything += Path(make_url(state_url).database or "").read_bytes().decode("latin-1")
    assert TOKEN not in everything
    assert PASSWORD not in everything
    # Emails are PII: they are in the audit trail, but never in log lines at INFO or above.
    info_logs = [
        line
        for output in outputs
        for line in output.splitlines()
        if " INFO " in line or " ERROR " in line or " WARNING " in line or '"level": "info"' in line
    ]
    assert info_logs and not any("@example.com" in line for line in info_logs)


@pytest.mark.parametrize("url", ["http://hooks.example.com/wh-s3cret-9f8e7d", "https://user:wh-s3cret-9f8e7d@/x"])
def test_a_refused_webhook_url_is_not_echoed_by_validate(tmp_path: Path, url: str) -> None:
    config = tmp_path / "jobs.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "jobs": [
                    {"name": "j", "audiences": [{"name": "a", "file": "a.csv"}], "destination": {"webhook_url": url}}
                ]
            }
        )
    )
    (tmp_path / "a.csv").write_text("user_id\nu1\n")
    result = subprocess.run(
        [sys.executable, "-m", "sync", "--config", str(config), "validate"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "webhook" in result.stderr
    assert TOKEN not in result.stdout + result.stderr
