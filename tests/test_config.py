from pathlib import Path

import pytest

from sync.config import ChartMogulWebhookConfig, check_webhook_url, load_config, parse_config, parse_duration
from sync.errors import ConfigError

SECRET = "https://hooks.chartmogul.example/v1/segment/very-secret-token"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(text)
    return path


GOOD = """
state_url: sqlite:///state.db
jobs:
  - name: contacts
    space_id: spa_1
    source:
      url: sqlite:///warehouse.db
      profiles: SELECT user_id, email FROM users
    audiences:
      - name: Order Completed Last 30days
        query: SELECT user_id FROM a
      - name: VIP
        key: vip_customers
        query: SELECT user_id FROM b
      - name: Beta testers
        file: beta.csv
    traits:
      - name: Total Revenue 180 Days
        query: SELECT user_id, value FROM t
    destination:
      type: chartmogul
      webhook_url: ${CHARTMOGUL_WEBHOOK_URL}
    schedule:
      every: 2h
      jitter: 1h
"""


def test_a_valid_file_loads_with_keys_defaults_and_resolved_paths(tmp_path: Path) -> None:
    (tmp_path / "beta.csv").write_text("user_id\nu1\n")
    config = load_config(write(tmp_path, GOOD), env={"CHARTMOGUL_WEBHOOK_URL": SECRET})
    job = config.job("contacts")
    assert job.audience_keys() == ["order_completed_last_30days", "vip_customers", "beta_testers"]
    assert job.trait_keys() == ["total_revenue_180_days"]
    assert job.destination.requests_per_second == 40
    assert job.destination.max_connections == 20
    assert job.destination.timeout.total_seconds() == 10
    assert isinstance(job.destination, ChartMogulWebhookConfig)
    assert job.destination.webhook_url.get_secret_value() == SECRET
    assert config.state_url == f"sqlite:///{tmp_path / 'state.db'}"
    assert job.source.url == f"sqlite:///{tmp_path / 'warehouse.db'}"
    assert job.audiences[2].file == str(tmp_path / "beta.csv")
    assert job.schedule.every.total_seconds() == 7200
    assert SECRET not in repr(job)


def test_env_defaults_and_state_url_override(tmp_path: Path) -> None:
    (tmp_path / "beta.csv").write_text("user_id\n")
    text = GOOD.replace("${CHARTMOGUL_WEBHOOK_URL}", "${HOOK:-http://127.0.0.1:9/webhook}")
    config = load_config(write(tmp_path, text), env={"AUDIENCE_SYNC_STATE_URL": "sqlite:////tmp/other.db"})
    assert config.state_url == "sqlite:////tmp/other.db"
    destination = config.jobs[0].destination
    assert isinstance(destination, ChartMogulWebhookConfig)
    assert destination.webhook_url.get_secret_value() == "http://127.0.0.1:9/webhook"


def test_every_problem_is_reported_at_once_with_job_and_field(tmp_path: Path) -> None:
    text = """
state_url: sqlite:///s.db
colour: blue
jobs:
  - name: contacts
    source: {url: "sqlite:///w.db", profiles: "SELECT 1"}
    audiences:
      - {name: "VIP", query: "SELECT 1"}
      - {name: "vip", query: "SELECT 2"}
      - {name: "!!!", query: "SELECT 3"}
      - {name: "Email", query: "SELECT 4"}
      - {name: "Both", query: "SELECT 5", file: "x.csv"}
      - {name: "Neither"}
    destination: {webhook_url: "${MISSING}", requests_per_second: fast, shoe_size: 9}
  - name: Bad Name
    destination: {webhook_url: "http://example.com/hook"}
  - name: contacts
    audiences: [{name: a, file: nope.csv}]
    destination: {webhook_url: "https://example.com/hook"}
    schedule: {every: soon}
"""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), env={})
    problems = caught.value.problems
    text_of = "\n".join(problems)
    expected = [
        "environment variable MISSING is not set (used by job 'contacts': destination.webhook_url",
        "colour: unknown setting",
        "job 'contacts': destination.requests_per_second: must be a valid number, not 'fast'",
        "job 'contacts': destination.shoe_size: unknown setting",
        "job 'Bad Name': name: String should match pattern",
        "job 'Bad Name': destination.webhook_url: the webhook URL must use https://",
        "job 'contacts': schedule.every: expected a duration",
        "job 'contacts': the job name is used more than once",
    ]
    for fragment in expected:
        assert fragment in text_of, fragment


def test_job_level_checks_name_the_field(tmp_path: Path) -> None:
    jobs = [
        {
            "name": "contacts",
            "source": {"url": "sqlite:///w.db"},
            "audiences": [
                {"name": "VIP", "query": "SELECT 1"},
                {"name": "vip", "query": "SELECT 2"},
                {"name": "!!!", "query": "SELECT 3"},
                {"name": "Email", "query": "SELECT 4"},
                {"name": "Both", "query": "SELECT 5", "file": "x.csv"},
                {"name": "Neither"},
            ],
            "traits": [{"name": "t", "file": "missing.csv"}, {"name": "VIP", "query": "SELECT 6"}],
            "destination": {"webhook_url": "https://example.com/h"},
        }
    ]
    with pytest.raises(ConfigError) as caught:
        parse_config({"jobs": jobs}, {}, tmp_path)
    problems = caught.value.problems
    assert "job 'contacts': audiences[1]: key 'vip' is already used by audiences[0]" in problems
    assert "job 'contacts': audiences[2].name: '!!!' gives an empty key; set key explicitly" in problems
    assert "job 'contacts': audiences[3]: key 'email' is a standard contact field; set another key" in problems
    assert "job 'contacts': audiences[4]: give exactly one of query, query_file, ref or file" in problems
    assert "job 'contacts': audiences[5]: give exactly one of query, query_file, ref or file" in problems
    assert "job 'contacts': traits[0].file: no such file: missing.csv" in problems
    assert "job 'contacts': traits[1]: key 'vip' is already used by audiences[0]" in problems


def test_an_explicit_key_fixes_an_empty_one(tmp_path: Path) -> None:
    jobs = [
        {
            "name": "j",
            "source": {"url": "sqlite:///w.db"},
            "audiences": [{"name": "日本語ユーザー", "key": "japanese_users", "query": "SELECT 1"}],
            "destination": {"webhook_url": "https://example.com/h"},
        }
    ]
    assert parse_config({"jobs": jobs}, {}, tmp_path).jobs[0].audience_keys() == ["japanese_users"]


def test_queries_need_a_warehouse_and_a_job_needs_a_computation(tmp_path: Path) -> None:
    jobs = [
        {
            "name": "j",
            "audiences": [{"name": "a", "query": "SELECT 1"}],
            "source": {"profiles": "SELECT 1"},
            "destination": {"webhook_url": "https://example.com/h"},
        },
        {"name": "k", "destination": {"webhook_url": "https://example.com/h"}},
    ]
    with pytest.raises(ConfigError) as caught:
        parse_config({"jobs": jobs}, {}, tmp_path)
    assert "job 'j': audiences[0].query: needs source.url, the warehouse to run it against" in caught.value.problems
    assert "job 'j': source.profiles: needs source.url, the warehouse to run it against" in caught.value.problems
    assert "job 'k': audiences/traits: a job needs at least one audience or trait" in caught.value.problems


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "jobs:\n  - name: [unclosed\n"), env={})
    assert "not valid YAML" in str(caught.value)
    assert "line" in str(caught.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(tmp_path / "nope.yaml", env={})


@pytest.mark.parametrize(
    "url",
    ["https://a.example/x", "http://127.0.0.1:8787/w", "http://localhost/w", "http://[::1]:80/w", "http://127.5.6.7/w"],
)
def test_https_or_loopback_webhooks_are_accepted(url: str) -> None:
    check_webhook_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook?token=s3cret",
        "ftp://example.com/s3cret",
        "s3cret",
        "https:///s3cret",
        "http://10.0.0.1/s3cret",
        "http://[::1/s3cret",
    ],
)
def test_other_webhooks_are_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_webhook_url(url)
    assert "s3cret" not in str(caught.value)


def test_config_errors_never_contain_the_webhook_url(tmp_path: Path) -> None:
    hook = "http://hooks.example.com/v1/s3cret-token"
    jobs = [
        {
            "name": "j",
            "audiences": [{"name": "a", "file": "x.csv"}],
            "destination": {"webhook_url": hook, "max_connections": 0},
        }
    ]
    with pytest.raises(ConfigError) as caught:
        parse_config({"jobs": jobs}, {}, tmp_path)
    assert "s3cret" not in str(caught.value)
    assert len(caught.value.problems) >= 2


@pytest.mark.parametrize(
    ("text", "seconds"), [("45s", 45), ("15m", 900), ("2h", 7200), ("1d", 86400), ("250ms", 0.25), (30, 30)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


def test_unknown_job_is_a_config_error(tmp_path: Path) -> None:
    jobs = [
        {
            "name": "j",
            "source": {"url": "sqlite:///w.db"},
            "audiences": [{"name": "a", "query": "SELECT 1"}],
            "destination": {"webhook_url": "https://example.com/h"},
        }
    ]
    config = parse_config({"jobs": jobs}, {}, tmp_path)
    with pytest.raises(ConfigError, match="no job named 'k'"):
        config.job("k")


def test_a_very_high_finite_rate_is_accepted_and_an_infinite_one_refused() -> None:
    job = {
        "name": "bench",
        "audiences": [{"name": "VIP", "query": "SELECT 1"}],
        "source": {"url": "sqlite://"},
        "destination": {"webhook_url": "http://127.0.0.1:1/hook", "requests_per_second": 1e6},
    }
    assert parse_config({"jobs": [job]}, {}, Path(".")).jobs[0].destination.requests_per_second == 1e6
    job["destination"] = {**job["destination"], "requests_per_second": float("inf")}  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="requests_per_second"):
        parse_config({"jobs": [job]}, {}, Path("."))


def test_notify_targets_are_validated_with_every_problem_named() -> None:
    job = {
        "name": "contacts",
        "audiences": [{"name": "VIP", "query": "SELECT 1"}],
        "source": {"url": "sqlite://"},
        "destination": {"webhook_url": "https://hooks.example.com/x"},
    }
    notify = [
        {"type": "slack", "url": "http://hooks.slack.example/services/T0/B0/x"},  # plain http off loopback
        {"type": "pager", "url": "https://alerts.example.com/x"},
        {"type": "webhook", "url": "https://alerts.example.com/x", "jobs": ["nojob"], "on": ["exploded"]},
        {"type": "webhook", "url": "https://alerts.example.com/x", "failed_share": 1.5},
    ]
    with pytest.raises(ConfigError) as error:
        parse_config({"jobs": [job], "notify": notify}, {}, Path("."))
    text = "\n".join(error.value.problems)
    assert "notify[0]: url: the webhook URL must use https://" in text
    assert "notify[1]: type" in text
    assert "notify[2]: on[0]" in text
    assert "notify[3]: failed_share" in text
    assert "hooks.slack.example/services" not in text  # a notification URL is never echoed
    fine = parse_config(
        {"jobs": [job], "notify": [{"type": "webhook", "url": "https://a.example/x", "jobs": ["contacts"]}]},
        {},
        Path("."),
    )
    assert fine.notify[0].jobs == ("contacts",)
    unknown_job = {"type": "webhook", "url": "https://a.example/x", "jobs": ["nojob"]}
    with pytest.raises(ConfigError, match=r"notify\[0\]\.jobs: no job named 'nojob'"):
        parse_config({"jobs": [job], "notify": [unknown_job]}, {}, Path("."))
