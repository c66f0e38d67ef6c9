"""docker/compose.yaml and the files it mounts agree with each other and with the server:
ports, service names, container paths and the files behind them."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import pytest
import yaml

from server.http.app import create_app
from server.settings import Settings
from tests.docker.dockerfiles import DOCKER, REPO, env_values, instructions

COMPOSE = DOCKER / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def default(value: str) -> str:
    """Compose's `${NAME:-default}` read with its default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def ports(service: dict) -> dict[int, int]:
    """{container port: host port}."""
    out = {}
    for spec in service.get("ports", []):
        host, _, container = default(spec).rpartition(":")
        out[int(container)] = int(host)
    return out


def mounts(service: dict) -> dict[str, str]:
    """{container path: host source} of the bind mounts (named volumes left out)."""
    out = {}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = source
    return out


def host_file(service: dict, container_path: str) -> Path:
    """The repository file a container path of `service` comes from, through its bind mounts."""
    path = PurePosixPath(container_path)
    for target, source in mounts(service).items():
        if path == PurePosixPath(target) or PurePosixPath(target) in path.parents:
            return (DOCKER / source / path.relative_to(target)).resolve()
    raise AssertionError(f"{container_path} is not under any bind mount of the service")


def flag(service: dict, name: str) -> str:
    return next(c.split("=", 1)[1] for c in service["command"] if c.startswith(f"--{name}="))


def test_the_stack_has_the_server_prometheus_and_grafana(compose):
    assert set(compose["services"]) == {"server", "prometheus", "grafana"}
    assert set(compose["volumes"]) == {"prometheus-data", "grafana-data"}


def test_server_is_built_from_the_repository_with_the_cpu_dockerfile(compose):
    build = compose["services"]["server"]["build"]
    context = (DOCKER / build["context"]).resolve()
    assert context == REPO
    assert (context / build["dockerfile"]) == DOCKER / "Dockerfile"


def test_server_port_is_the_one_the_image_serves(compose):
    image_port = int(env_values(instructions(DOCKER / "Dockerfile"))["ACCSMOOTH_PORT"])
    assert ports(compose["services"]["server"]) == {image_port: 8000}
    assert ports(compose["services"]["prometheus"]) == {9090: 9090}
    assert ports(compose["services"]["grafana"]) == {3000: 3000}


def test_every_bind_mount_source_exists(compose):
    for name, service in compose["services"].items():
        for target, source in mounts(service).items():
            assert (DOCKER / source).exists(), f"{name}: {source} (for {target}) is missing"


def test_prometheus_reads_the_repository_config_and_scrapes_the_server(compose):
    service = compose["services"]["prometheus"]
    config_path = host_file(service, flag(service, "config.file"))
    assert config_path == (DOCKER / "prometheus" / "prometheus.yml").resolve()
    config = yaml.safe_load(config_path.read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "accsmooth")
    routes = create_app(Settings(models_dir=Path("models"))).openapi()["paths"]
    assert job["metrics_path"] in routes
    (target,) = [t for c in job["static_configs"] for t in c["targets"]]
    host, port = target.split(":")
    assert host in compose["services"] and int(port) in ports(compose["services"][host])
    for pattern in config["rule_files"]:
        assert list(config_path.parent.glob(pattern)), f"rule_files {pattern} matches no file"


def test_grafana_datasource_points_at_the_prometheus_service(compose):
    service = compose["services"]["grafana"]
    folder = host_file(service, "/etc/grafana/provisioning/datasources")
    (source,) = yaml.safe_load((folder / "prometheus.yml").read_text())["datasources"]
    match = re.fullmatch(r"http://([\w-]+):(\d+)", source["url"])
    assert match, source["url"]
    assert match.group(1) == "prometheus"
    assert int(match.group(2)) in ports(compose["services"]["prometheus"])
    assert source["type"] == "prometheus"


def test_grafana_dashboard_provider_loads_the_mounted_dashboards(compose):
    service = compose["services"]["grafana"]
    folder = host_file(service, "/etc/grafana/provisioning/dashboards")
    (provider,) = yaml.safe_load((folder / "accsmooth.yml").read_text())["providers"]
    dashboards = host_file(service, provider["options"]["path"])
    assert dashboards == (DOCKER / "grafana" / "dashboards").resolve()
    assert (dashboards / "accsmooth.json").is_file()
    home = service["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_file(service, home).is_file()
