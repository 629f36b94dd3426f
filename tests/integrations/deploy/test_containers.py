"""deploy/docker and deploy/compose.yaml: the Dockerfiles pass hadolint and do what the images
promise (non-root, tini, health check, data volume, server flags the server accepts); Compose
accepts compose.yaml, and every file it mounts exists.

No image is built here (no container engine on the test machines): what can be checked without
one is checked."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service_helpers import parse_serve_args, cache_dir_for_tests

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
DOCKERFILES = [DEPLOY / "docker" / "Dockerfile", DEPLOY / "docker" / "Dockerfile.cuda"]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    """A checker from the `deploy` extra (installed by `make test`), else skip saying so."""
    found = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} not found: install the deploy extra (pip install -e '.[deploy]'), as make test does")
    return str(found)


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    stages: list[list[tuple[str, str]]] = [[]]
    for line in lines:
        op, _, rest = line.partition(" ")
        if op.upper() == "FROM":
            stages.append([])
        stages[-1].append((op.upper(), rest.strip()))
    return stages[-1]


def _one(instructions: list[tuple[str, str]], op: str) -> str:
    found = [rest for name, rest in instructions if name == op]
    assert len(found) == 1, f"expected one {op}, found {found}"
    return found[0]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    done = subprocess.run([_tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_runs_the_server_as_promised(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    for base in re.findall(r"^ARG \w+_IMAGE=(\S+)$", text, re.MULTILINE):
        assert ":" in base and not base.endswith(":latest"), f"unpinned base image {base}"
    final = _instructions(dockerfile)
    assert final[0][1].startswith("${"), "the final stage starts from the pinned base"
    assert _one(final, "USER") == "10001:10001"
    assert json.loads(_one(final, "ENTRYPOINT")) == ["/usr/bin/tini", "--", "secateurs"]
    assert json.loads(_one(final, "VOLUME")) == ["/var/lib/secateurs"]
    assert _one(final, "EXPOSE").split() == ["50051", "9464"]
    health = _one(final, "HEALTHCHECK")
    assert json.loads(health.split("CMD", 1)[1]) == ["secateurs-healthcheck", "--address", "127.0.0.1:50051"]
    assert "SECATEURS_METRICS_LISTEN=0.0.0.0:9464" in _one(final, "ENV")
    cmd = json.loads(_one(final, "CMD"))
    assert cmd[0] == "serve"
    args = parse_serve_args(cmd[1:])
    assert args.listen == "0.0.0.0:50051" and str(args.data_dir) == "/var/lib/secateurs"
    # What the image copies in is what .dockerignore lets through.
    ignore = (REPO / ".dockerignore").read_text()
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for path in source.split():
            assert (REPO / path).exists(), path
            assert f"!{path.rstrip('/')}" in ignore.replace("/\n", "\n"), f"{path} is excluded by .dockerignore"


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    """`docker compose` with the Compose binary of the deploy extra as the docker CLI's plugin;
    the same binary on its own (`docker-compose`) where there is no docker CLI."""
    compose = _tool("docker-compose")
    docker = shutil.which("docker")
    env = dict(os.environ)
    env.pop("SECATEURS_TOKEN", None)
    if docker is None:
        command = [compose]
    else:
        plugins = cache_dir_for_tests() / "docker"
        (plugins / "cli-plugins").mkdir(parents=True, exist_ok=True)
        link = plugins / "cli-plugins" / "docker-compose"
        if not link.exists() or link.resolve() != Path(compose).resolve():
            link.unlink(missing_ok=True)
            link.symlink_to(compose)
        env["DOCKER_CONFIG"] = str(plugins)
        command = [docker, "compose"]
    return subprocess.run([*command, "-f", str(DEPLOY / "compose.yaml"), *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_compose_accepts_the_file_and_it_wires_the_three_services() -> None:
    quiet = _compose("config", "--quiet")
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    resolved = _compose("config", "--format", "json")
    assert resolved.returncode == 0, resolved.stderr
    config = json.loads(resolved.stdout)
    services = config["services"]
    assert set(services) == {"secateurs", "prometheus", "grafana"}

    server = services["secateurs"]
    assert server["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert Path(server["build"]["context"]).resolve() == REPO
    assert server["command"][0] == "serve"
    args = parse_serve_args(server["command"][1:])
    assert args.metrics_listen == "0.0.0.0:9464" and str(args.data_dir) == "/var/lib/secateurs"
    assert server["healthcheck"]["test"][:2] == ["CMD", "secateurs-healthcheck"]
    assert {"type": "volume", "source": "secateurs-data", "target": "/var/lib/secateurs"}.items() <= \
        server["volumes"][0].items()
    assert server["environment"]["SECATEURS_TOKEN"] == ""  # unset: no token required
    # The server drains for --grace seconds; Compose must wait longer before SIGKILL.
    assert float(server["stop_grace_period"].rstrip("s")) > args.grace

    # Prometheus scrapes the server by its Compose name and loads the alert rules.
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["secateurs:9464"]
    assert "alerts.yml" in scrape["rule_files"]

    # Every bind mount's source exists, and Grafana gets its data source and the dashboard.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name}: {volume['source']}"
    grafana = {v["target"]: Path(v["source"]) for v in services["grafana"]["volumes"] if v["type"] == "bind"}
    provisioning = grafana["/etc/grafana/provisioning"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and datasource["isDefault"]
    provider = yaml.safe_load((provisioning / "dashboards" / "secateurs.yaml").read_text())["providers"][0]
    dashboards = [t for t, s in grafana.items() if t.startswith(provider["options"]["path"] + "/")]
    assert [grafana[t].name for t in dashboards] == ["secateurs-dashboard.json"]


def test_compose_refuses_a_broken_file(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key is refused."""
    broken = tmp_path / "compose.yaml"
    broken.write_text((DEPLOY / "compose.yaml").read_text().replace("start_period:", "start_perod:"))
    compose = _tool("docker-compose")
    done = subprocess.run([compose, "-f", str(broken), "config", "--quiet"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "start_perod" in done.stderr
