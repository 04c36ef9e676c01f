"""Static checks of docker/: no Docker engine runs here, so the files are checked against the code.

Commands, options and ``OUTBOX_*`` variables used by the image and the compose file must exist
in the `outbox` CLI; every metric the dashboard and the alerts query must be one that
`PrometheusObserver` exports; ports must agree between the image, compose and Prometheus.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from outbox.config import ENV_PREFIX, PRODUCER_ENV_PREFIX, RelayConfig
from outbox.ops.metrics import PrometheusObserver

DOCKER = Path(__file__).resolve().parents[2] / "docker"
OUR_IMAGE = "sqlalchemy-outbox:local"


# --- parsing ---------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        name, _, rest = text.partition(" ")
        instructions.append((name.upper(), rest.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    last_from = max(i for i, (name, _) in enumerate(steps) if name == "FROM")
    return steps[last_from:]


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"not exec form: {arguments}"
    assert all(isinstance(v, str) for v in value)
    return value


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for name, rest in final_stage():
        if name == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def image_entrypoint() -> list[str]:
    [entry] = [exec_form(rest) for name, rest in final_stage() if name == "ENTRYPOINT"]
    return entry


def image_healthcheck() -> list[str]:
    [check] = [rest for name, rest in final_stage() if name == "HEALTHCHECK"]
    _, _, command = check.partition("CMD ")
    return exec_form(command)


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def argv(service: dict[str, Any]) -> list[str]:
    """What the container runs: its entrypoint (or the image's) followed by its command."""
    entry = service.get("entrypoint", image_entrypoint())
    command = service.get("command", [])
    assert isinstance(entry, list), "use the exec (list) form for entrypoint"
    assert isinstance(command, list), "use the exec (list) form for command"
    return [str(a) for a in entry + command]


def our_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services().items() if s.get("image") == OUR_IMAGE}


def cli_commands() -> dict[str, click.Command]:
    from outbox.cli import cli

    return dict(cli.commands)


def command_envvars(command: click.Command) -> set[str]:
    names: set[str] = set()
    for param in command.params:
        envvar = param.envvar
        if isinstance(envvar, str):
            names.add(envvar)
        elif envvar:
            names.update(envvar)
    return names


def config_envvars() -> set[str]:
    """The variables `RelayConfig.from_env` reads (the relay command builds its config so)."""
    return {ENV_PREFIX + f.name.upper() for f in fields(RelayConfig) if f.name != "producer_config"}


def accepted_envvars(command_name: str) -> set[str]:
    commands = cli_commands()
    assert command_name in commands, f"`outbox {command_name}` is not a CLI command"
    names = command_envvars(commands[command_name])
    if command_name == "relay":
        names |= config_envvars()
    return names


def exported_sample_names() -> set[str]:
    observer = PrometheusObserver()
    observer.published("t", 1, [0.01])
    observer.publish_failed("t", "rejected", 1)
    observer.parked("t", 1)
    observer.batch(1, 0.01)
    observer.backlog(1, 1.0)
    observer.lease(True)
    observer.state("database", True)
    body = observer.render()[0].decode()
    return {s.name for f in text_string_to_metric_families(body) for s in f.samples}


def queried_metrics(expressions: list[str]) -> set[str]:
    return {name for e in expressions for name in re.findall(r"\boutbox_[a-z0-9_]+", e)}


# --- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_slim_python() -> None:
    froms = [rest for name, rest in dockerfile() if name == "FROM"]
    assert len(froms) >= 2
    assert froms[-1].split()[0] == "python:3.11-slim"


def test_dockerfile_installs_the_wheel_with_its_extras() -> None:
    defaults = dict(
        rest.partition("=")[::2] for name, rest in dockerfile() if name == "ARG" and "=" in rest
    )
    assert set(defaults["EXTRAS"].split(",")) == {"postgresql", "mysql", "metrics"}
    builder_runs = " ".join(
        rest for name, rest in dockerfile()[: -len(final_stage())] if name == "RUN"
    )
    assert "pip wheel --wheel-dir /wheels" in builder_runs
    runs = " ".join(rest for name, rest in final_stage() if name == "RUN")
    assert 'pip install --no-index --find-links /wheels "sqlalchemy-outbox[${EXTRAS}]"' in runs


def test_dockerfile_runs_as_non_root() -> None:
    users = [rest for name, rest in final_stage() if name == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_dockerfile_entrypoint_and_healthcheck_are_exec_form() -> None:
    assert image_entrypoint() == ["outbox", "relay"]
    check = image_healthcheck()
    assert check[:2] == ["outbox", "healthcheck"]


def test_dockerfile_exposes_the_health_and_metrics_ports() -> None:
    exposed = {
        port.split("/")[0]
        for name, rest in final_stage()
        if name == "EXPOSE"
        for port in rest.split()
    }
    env = image_env()
    assert env["OUTBOX_HEALTH_PORT"] in exposed
    assert env["OUTBOX_METRICS_PORT"] in exposed
    check = image_healthcheck()
    assert check[check.index("--port") + 1] == env["OUTBOX_HEALTH_PORT"]


def test_dockerfile_env_exists_in_the_cli() -> None:
    known = set().union(*(accepted_envvars(name) for name in cli_commands())) | config_envvars()
    for name in image_env():
        if name.startswith(ENV_PREFIX) and not name.startswith(PRODUCER_ENV_PREFIX):
            assert name in known, f"Dockerfile sets {name}, which nothing reads"


# --- compose ---------------------------------------------------------------------------------


def test_compose_has_the_services() -> None:
    assert {"postgres", "kafka", "migrate", "relay", "app", "prometheus", "grafana"} <= set(
        services()
    )


def test_postgres_has_a_pg_isready_healthcheck() -> None:
    test = services()["postgres"]["healthcheck"]["test"]
    assert "pg_isready" in " ".join(test)


def test_kafka_runs_in_kraft_mode_with_replication_factor_1() -> None:
    kafka = services()["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.")
    env = environment(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name in (
        "KAFKA_NODE_ID",
        "KAFKA_LISTENERS",
        "KAFKA_ADVERTISED_LISTENERS",
        "KAFKA_CONTROLLER_QUORUM_VOTERS",
        "KAFKA_CONTROLLER_LISTENER_NAMES",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
        "CLUSTER_ID",
    ):
        assert env.get(name), f"kafka needs {name}"
    factors = {k: v for k, v in env.items() if k.endswith("REPLICATION_FACTOR")}
    assert factors
    assert set(factors.values()) == {"1"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"


def test_relay_waits_for_the_migration() -> None:
    migrate, relay = services()["migrate"], services()["relay"]
    assert argv(migrate)[:2] == ["outbox", "migrate"]
    assert relay["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert migrate.get("restart", "no") == "no"
    assert argv(relay)[:2] == ["outbox", "relay"]
    env = environment(relay)
    for name in (
        "OUTBOX_DB_URL",
        "OUTBOX_BOOTSTRAP_SERVERS",
        "OUTBOX_HEALTH_PORT",
        "OUTBOX_METRICS_PORT",
    ):
        assert name in env
    assert env["OUTBOX_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_relay_and_migrate_use_the_same_database() -> None:
    urls = {environment(s)["OUTBOX_DB_URL"] for s in our_services().values()}
    assert len(urls) == 1
    assert "@postgres:5432/" in urls.pop()


def test_commands_and_options_exist_in_the_cli() -> None:
    commands = cli_commands()
    runs = [argv(s) for s in our_services().values()] + [image_healthcheck()]
    checked = 0
    for args in runs:
        if args[0] != "outbox":
            continue
        assert args[1] in commands, f"`outbox {args[1]}` is not a CLI command"
        options = {opt for p in commands[args[1]].params for opt in p.opts + p.secondary_opts}
        for arg in args[2:]:
            if arg.startswith("-"):
                assert arg.split("=")[0] in options, f"`outbox {args[1]}` has no option {arg}"
        checked += 1
    assert checked >= 3


def test_python_modules_run_by_compose_exist() -> None:
    for name, service in our_services().items():
        args = argv(service)
        if args[:2] == ["python", "-m"]:
            assert importlib.util.find_spec(args[2]) is not None, f"{name}: no module {args[2]}"


@pytest.mark.parametrize("service", ["migrate", "relay"])
def test_compose_env_exists_in_the_cli(service: str) -> None:
    command = argv(services()[service])[1]
    accepted = accepted_envvars(command)
    for name in environment(services()[service]):
        if name.startswith(ENV_PREFIX) and not name.startswith(PRODUCER_ENV_PREFIX):
            assert name in accepted, f"{service}: `outbox {command}` does not read {name}"


def test_ports_agree_between_relay_healthcheck_and_prometheus() -> None:
    env = image_env() | environment(services()["relay"])
    check = image_healthcheck()
    assert check[check.index("--port") + 1] == env["OUTBOX_HEALTH_PORT"]
    assert (
        f"{env['OUTBOX_HEALTH_PORT']}:{env['OUTBOX_HEALTH_PORT']}" in services()["relay"]["ports"]
    )
    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = [
        t
        for job in prometheus["scrape_configs"]
        for c in job["static_configs"]
        for t in c["targets"]
    ]
    assert f"relay:{env['OUTBOX_METRICS_PORT']}" in targets


def test_prometheus_and_grafana_mount_existing_files() -> None:
    for name in ("prometheus", "grafana"):
        for volume in services()[name]["volumes"]:
            source = volume.split(":")[0]
            assert (DOCKER / source).exists(), f"{name} mounts missing {source}"


# --- dashboards and alerts -------------------------------------------------------------------


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "outbox.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_queries_only_exported_metrics() -> None:
    exported = exported_sample_names()
    queried = queried_metrics(dashboard_expressions())
    assert queried, "the dashboard queries no outbox metric"
    assert queried <= exported, f"not exported: {sorted(queried - exported)}"


def test_dashboard_has_the_expected_panels() -> None:
    text = " ".join(dashboard_expressions())
    for name in (
        "outbox_events_published_total",
        "outbox_publish_errors_total",
        "outbox_pending_events",
        "outbox_oldest_pending_age_seconds",
        "outbox_lease_held",
        "outbox_relays_live",
        "outbox_batch_size",
        "outbox_batch_duration_seconds",
    ):
        assert name in text
    assert "histogram_quantile(0.5, sum by (le) (rate(outbox_publish_delay_seconds_bucket" in text
    assert "histogram_quantile(0.99, sum by (le) (rate(outbox_publish_delay_seconds_bucket" in text


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard() -> None:
    provisioning = DOCKER / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    [source] = sources["datasources"]
    assert source["url"] == "http://prometheus:9090"
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "outbox.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    assert uids == {source["uid"]}
    providers = yaml.safe_load((provisioning / "dashboards" / "outbox.yml").read_text())
    paths = {p["options"]["path"] for p in providers["providers"]}
    mounts = dict(v.split(":")[:2] for v in services()["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] in paths


def test_alerts_query_only_exported_metrics() -> None:
    rules = yaml.safe_load((DOCKER / "alerts.yml").read_text())
    expressions = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert any("outbox_oldest_pending_age_seconds" in e for e in expressions)
    assert queried_metrics(expressions) <= exported_sample_names()
