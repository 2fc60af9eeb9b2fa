"""Airflow 3, with the real package: a DAG run by ``dag.test()`` (in a process of its own, with an Airflow home
of its own) whose ``AudienceSyncOperator`` syncs against the loopback receiver and pushes the run to XCom for
the next task; a failed run fails the task, and the DAG run, with its reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sync.dev.receiver import Receiver
from tests.conftest import Warehouse, job_dict

DAG = """
import json, os
from datetime import datetime
from airflow.sdk import DAG, task
from sync.integrations.airflow import AudienceSyncOperator

with DAG("audience_sync_test", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    sync = AudienceSyncOperator(task_id="sync", job="{{ params.job }}", config=os.environ["SYNC_CONFIG"],
                                params={"job": "contacts"})

    @task
    def keep(detail):
        with open(os.environ["SYNC_OUT"], "w") as out:
            json.dump(detail, out)

    keep(sync.output)

if __name__ == "__main__":
    print("DAG RUN", dag.test().state)
"""


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An Airflow home with its metadata database migrated and a DAGs folder holding the test DAG."""
    home = tmp_path_factory.mktemp("airflow")
    (home / "dags").mkdir()
    (home / "dags" / "audience_sync_test.py").write_text(DAG)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
    }
    migrated = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True, text=True, timeout=300
    )
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    return env


def dag_test(env: dict[str, str], config: Path, out: Path) -> subprocess.CompletedProcess[str]:
    dag = Path(env["AIRFLOW__CORE__DAGS_FOLDER"]) / "audience_sync_test.py"
    return subprocess.run(
        [sys.executable, str(dag)],
        env={**env, "SYNC_CONFIG": str(config), "SYNC_OUT": str(out)},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def write_config(tmp_path: Path, warehouse: Warehouse, webhook: str, **destination: Any) -> Path:
    raw = job_dict(warehouse, webhook, audiences=[warehouse.audience("VIP", "vip")], profiles=False, **destination)
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump({"state_url": "sqlite:///state.db", "jobs": [raw]}))
    return path


def test_the_operator_runs_the_job_and_pushes_the_run_to_xcom(
    airflow_home: dict[str, str], tmp_path: Path, warehouse: Warehouse
) -> None:
    warehouse.set_members("vip", ["u1", "u2"])
    out = tmp_path / "xcom.json"
    with Receiver() as receiver:
        done = dag_test(airflow_home, write_config(tmp_path, warehouse, receiver.url), out)
        delivered = {b["user_id"] for b in receiver.accepted()}
    assert "DAG RUN success" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert delivered == {"u1", "u2"}
    detail = json.loads(out.read_text())
    assert detail["run"]["status"] == "succeeded" and detail["run"]["delivered"] == 2
    assert detail["run"]["trigger"] == "airflow" and detail["run"]["job"] == "contacts"  # the templated job
    assert set(detail) >= {"run", "phases", "guard", "alerts", "failures", "definition"}


def test_a_failed_run_fails_the_task_with_its_reason(
    airflow_home: dict[str, str], tmp_path: Path, warehouse: Warehouse
) -> None:
    warehouse.set_members("vip", ["u1"])
    with Receiver() as receiver:
        url = receiver.url
    out = tmp_path / "xcom.json"
    done = dag_test(airflow_home, write_config(tmp_path, warehouse, f"{url}?k=wh-secret-7f", max_attempts=1), out)
    assert "DAG RUN failed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert "run 1 of contacts failed" in done.stdout + done.stderr
    assert "wh-secret-7f" not in done.stdout + done.stderr
    assert not out.exists()  # the next task did not run
