"""Fixtures shared by every test directory: system programs some tests drive (Prometheus,
promtool, Chromium), installed from Debian's packages when missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Iterator

import pytest

# the servers, clients and weights the api/, jobs/, probe/ and integrations/ tests start from
from service_fixtures import *  # noqa: F401,F403

# The longest files of `make test` (tests/README.md), handed to the two workers first: with one file per
# worker at a time (--dist loadfile), a long file collected last ran alone at the end of the run for
# minutes while the other worker sat idle.
LONGEST_FIRST = (
    "jobs/test_crashes.py", "engine/search/test_search.py", "engine/test_detection_jobs.py",
    "engine/test_dense_jobs.py", "integrations/airflow/test_airflow.py", "integrations/kfp/test_kfp.py",
    "probe/test_probe.py", "engine/test_reach_jobs.py", "engine/prune/test_prune.py", "jobs/test_faults.py",
    "api/test_program_upload.py", "api/test_concurrency.py", "api/test_prometheus.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files in LONGEST_FIRST first, in that order; every other file after them, as collected
    (a stable sort: the order of tests inside a file is unchanged)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    root = os.path.dirname(__file__)
    items.sort(key=lambda item: rank.get(os.path.relpath(str(item.path), root).replace(os.sep, "/"), len(rank)))


@pytest.fixture(scope="session", autouse=True)
def one_measurement_at_a_time(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every process of the test run (xdist workers, the servers and job workers they start) shares
    one measurement lock, as the jobs of one machine do: a test measures alone, whatever runs beside it."""
    from secateurs.engine.latency.devicelock import LOCK_DIR_ENV

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if base.name.startswith("popen-gw") else base  # the run's, not one xdist worker's
    os.environ.setdefault(LOCK_DIR_ENV, str(shared / "measurement-lock"))


@pytest.fixture(scope="session", autouse=True)
def fork_server_of_real_jobs() -> None:
    """A process has one fork server, and the first scheduler to start decides what it imports: here
    always the engine, or a test's fake-runner server started first would leave every later real
    job of that process importing the engine itself (secateurs/jobs/scheduler.py, use_fork_server_for)."""
    from secateurs.jobs.scheduler import DEFAULT_RUNNER, use_fork_server_for

    use_fork_server_for(DEFAULT_RUNNER)


@pytest.fixture(autouse=True)
def measures_alone(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test marked `measures` (its assertions rest on latency measured in its process) holds the
    measurement lock for its whole length, so no other process's compute (jobs training, pruning,
    exporting) runs beside it. The lock cannot stop a neighbour's other work (a server starting, a
    model being built): `make test` runs these tests after the rest, alone on the machine."""
    if request.node.get_closest_marker("measures") is None:
        yield
        return
    from secateurs.engine.latency import devicelock

    with devicelock.measuring():
        yield


def system_command(command: str, package: str) -> str:
    """The path of `command`; when it is missing, install Debian's `package` (as root, the way
    CI runs), or skip saying how to install it where that is not possible."""
    found = shutil.which(command)
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip(f"{command} not found: install Debian's {package} package (apt-get install {package})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:  # a fresh machine may have no or stale package lists
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True, timeout=600)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    found = shutil.which(command)
    if done.returncode != 0 or not found:
        pytest.fail(f"apt-get install {package} failed ({done.returncode}):\n{done.stdout[-2000:]}\n"
                    f"{done.stderr[-2000:]}")
    return found


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return system_command("prometheus", "prometheus")


@pytest.fixture(scope="session")
def promtool_bin(prometheus_bin: str) -> str:
    return system_command("promtool", "prometheus")  # shipped in the same package


@pytest.fixture(scope="session")
def chromium_bin() -> str:
    return system_command("chromium", "chromium")
