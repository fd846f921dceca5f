"""The deployment files in deploy/: valid for Kubernetes, and in agreement with the code they run.

No cluster runs here. Every manifest is checked against the Kubernetes API's JSON schemas (the
ones kubernetes-validate carries, strict: an unknown field is an error), for the oldest release
the manifests claim and the newest the package knows. What a schema cannot see is checked against
the code itself: the probes' paths answer 200 from the real app, the ConfigMap's policy loads and
is the shipped default, the environment variables are ones the code reads, the command lines
parse with the real CLI, and the image runs ``cascade serve`` as a fixed non-root user.
"""

from __future__ import annotations

import json
import shlex
import tomllib
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from cascade.cli import _parser
from cascade.ledger.database import DATABASE_URL_ENV
from cascade.ledger.keys import PEPPER_ENV
from cascade.policy import Policy, load_policy, parse_policy
from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.servers import serving

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
MANIFESTS = sorted(p for p in KUBERNETES.rglob("*.yaml") if p.name != "kustomization.yaml")
NOT_IN_KUSTOMIZATION = {"secret.example.yaml", "migrate-job.yaml"}
"""Applied on their own (see kustomization.yaml's comment); examples/ is not listed either."""
VERSIONS = ("1.30", kubernetes_validate.latest_version())
CUT_AND_FLUSH_S = 10.0
"""Time to cut what outlived the drain and flush the ledger: more than the workers' 5 s."""
"""``cascade serve --drain-timeout``'s default, for as long as this checkout has no such flag."""

Resource = dict[str, Any]


def _documents(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _resource(kind: str, name: str) -> Resource:
    found = [
        doc
        for path in MANIFESTS
        for doc in _documents(path)
        if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} manifests define it"
    return found[0]


def _container(workload: Resource) -> Resource:
    [container] = workload["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _argv(container: Resource) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def _serve_options(argv: list[str]) -> Any:
    """``cascade serve``'s options as the real CLI parses them."""
    assert argv[:2] == ["cascade", "serve"], argv
    return _parser().parse_args(argv[1:])


PROXY = _resource("Deployment", "cascade")
POLICY_MAP = _resource("ConfigMap", "cascade-policy")
SECRET = _resource("Secret", "cascade-secrets")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(KUBERNETES)))
def test_every_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    """Each resource of each manifest passes the API's schema for its kind (no unknown field)."""
    for doc in _documents(path):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {where}: {exc}")


def test_the_schema_check_catches_a_misspelled_field() -> None:
    """A typo a cluster would reject (readinesProbe) fails the check above, not only in a
    cluster."""
    broken = yaml.safe_load(yaml.safe_dump(PROXY))
    container = _container(broken)
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


def test_the_kustomization_lists_every_manifest_but_the_ones_applied_apart() -> None:
    """``kubectl apply -k deploy/kubernetes`` applies all the proxy needs, never the secret
    template, and every resource lands in one namespace."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    top = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == top - NOT_IN_KUSTOMIZATION
    namespaces = {
        doc["metadata"].get("namespace")
        for path in MANIFESTS
        for doc in _documents(path)
        if doc["kind"] != "Namespace"
    }
    assert namespaces == {kustomization["namespace"]}


def test_the_proxy_listens_where_the_service_probes_and_scraper_look() -> None:
    """The serve command binds 0.0.0.0 on the container's port, which the Service, the probes
    and the scrape annotations all name."""
    container = _container(PROXY)
    options = _serve_options(_argv(container))
    [port] = container["ports"]
    assert options.host == "0.0.0.0"
    assert options.port == port["containerPort"]
    [service_port] = _resource("Service", "cascade")["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == port["name"]
    annotations = PROXY["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(options.port)


def test_the_service_and_the_disruption_budget_select_the_proxy_pods() -> None:
    """Several replicas, and the Service and PodDisruptionBudget select exactly their labels."""
    labels = PROXY["spec"]["template"]["metadata"]["labels"]
    assert PROXY["spec"]["replicas"] >= 2
    assert _resource("Service", "cascade")["spec"]["selector"] == labels
    assert _resource("PodDisruptionBudget", "cascade")["spec"]["selector"]["matchLabels"] == labels


def test_the_grace_period_outlasts_the_drain() -> None:
    """The kubelet waits longer than the proxy's drain (the delay while endpoints update, the
    wait for what is in flight, and a few seconds to cut the rest and flush) before killing it."""
    container = _container(PROXY)
    options = _serve_options(_argv(container))
    assert "lifecycle" not in container  # the drain delay does what a preStop pause would
    grace = PROXY["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= options.drain_delay + options.drain_timeout + CUT_AND_FLUSH_S


def test_the_probes_and_the_scrape_path_answer_from_the_real_app(tmp_path: Path) -> None:
    """Every path the Deployment and the image check answers 200 from the proxy started on the
    ConfigMap's policy (engines not reachable, no API key: ready, degraded)."""
    policy = tmp_path / "default.yaml"
    policy.write_text(POLICY_MAP["data"]["default.yaml"], encoding="utf-8")
    container = _container(PROXY)
    paths = {container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe")}
    paths.add(container["livenessProbe"]["httpGet"]["path"])
    paths.add(PROXY["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"])
    paths.add(_healthcheck_url().path)
    settings = ServerSettings(policies=(str(policy),), reload_interval_s=0)
    with serving(create_app(settings)) as url:
        answers = {path: httpx.get(url + path, timeout=10).status_code for path in paths}
    assert answers == dict.fromkeys(paths, 200)
    assert paths >= {"/healthz", "/readyz", "/metrics"}


def test_the_policy_is_mounted_where_serve_reads_it_and_stays_reloadable() -> None:
    """``--policy`` names the ConfigMap's key in its mounted directory; no subPath (a subPath
    mount never sees an update, so hot reload would silently stop)."""
    container = _container(PROXY)
    [policy] = _serve_options(_argv(container)).policy
    volumes = {v["name"]: v for v in PROXY["spec"]["template"]["spec"]["volumes"]}
    [mount] = [m for m in container["volumeMounts"] if "configMap" in volumes[m["name"]]]
    assert "subPath" not in mount
    assert volumes[mount["name"]]["configMap"]["name"] == POLICY_MAP["metadata"]["name"]
    folder, key = policy.rsplit("/", 1)
    assert folder == mount["mountPath"]
    assert key in POLICY_MAP["data"]


def test_the_root_filesystem_is_read_only_and_the_spool_has_a_volume() -> None:
    """The proxy runs as non-root on a read-only root; the only paths it writes (the ledger's
    spool, temporary files) are emptyDir volumes."""
    container = _container(PROXY)
    pod = PROXY["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {
        m["mountPath"] for m in container["volumeMounts"] if "emptyDir" in volumes[m["name"]]
    }
    spool = _serve_options(_argv(container)).spool
    assert any(spool.startswith(folder + "/") for folder in writable), (spool, writable)
    assert "/tmp" in writable


def test_the_configmap_policy_is_the_shipped_default_on_in_cluster_engines() -> None:
    """The ConfigMap's policy loads, equals policies/default.yaml but for the self-hosted tiers'
    endpoints (the example engines' Services) and concurrency, and names the models those
    engines serve."""
    mapped = parse_policy(POLICY_MAP["data"]["default.yaml"], source="policy-configmap.yaml")
    assert _without_placement(mapped) == _without_placement(load_policy("default"))
    for tier in (t for t in mapped.tiers if t.kind == "self_hosted"):
        engine = _resource("Deployment", f"vllm-{tier.name}")
        [service_port] = _resource("Service", f"vllm-{tier.name}")["spec"]["ports"]
        assert tier.endpoint == f"http://vllm-{tier.name}:{service_port['port']}/v1"
        args = _container(engine)["args"]
        assert args[args.index("--served-model-name") + 1] == tier.model


def _without_placement(policy: Policy) -> dict[str, Any]:
    """The policy less what a deployment changes: where self-hosted tiers are, how many calls
    each proxy replica sends them."""
    data = policy.model_dump()
    for tier in data["tiers"]:
        if tier["kind"] == "self_hosted":
            tier.pop("endpoint")
            tier.pop("max_concurrency")
    return data


def test_every_environment_variable_is_one_the_code_reads() -> None:
    """The proxy and the migration Job get only variables cascade reads (the ledger's URL, the
    key pepper, the policy's API key variables), each from a key of the Secret."""
    policy = parse_policy(POLICY_MAP["data"]["default.yaml"])
    read = {DATABASE_URL_ENV, PEPPER_ENV} | {t.api_key_env for t in policy.tiers if t.api_key_env}
    secret_keys = set(SECRET["stringData"])
    for workload in (PROXY, _resource("Job", "cascade-migrate")):
        env = _container(workload)["env"]
        assert {e["name"] for e in env} <= read
        assert DATABASE_URL_ENV in {e["name"] for e in env}  # else: SQLite in the pod
        for entry in env:
            reference = entry["valueFrom"]["secretKeyRef"]
            assert reference["name"] == SECRET["metadata"]["name"]
            assert reference["key"] in secret_keys


def test_the_migration_job_runs_the_real_upgrade_command_with_the_proxy_image() -> None:
    """The Job's command is ``cascade db upgrade`` as the CLI parses it, in the proxy's image and
    user."""
    job = _resource("Job", "cascade-migrate")
    container = _container(job)
    argv = _argv(container)
    assert argv == ["cascade", "db", "upgrade"]
    _parser().parse_args(argv[1:])  # exits (SystemExit) on an unknown command
    assert container["image"] == _container(PROXY)["image"]
    user = job["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert user == PROXY["spec"]["template"]["spec"]["securityContext"]["runAsUser"]


# The image: deploy/Dockerfile, read as instructions (no Docker daemon runs here).

Instruction = tuple[str, str]


def _stages() -> list[list[Instruction]]:
    """The Dockerfile's instructions, continuation lines joined, split into build stages."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    stages: list[list[Instruction]] = []
    for entry in logical:
        keyword, _, rest = entry.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), rest))
    return stages


def _final(keyword: str) -> list[str]:
    return [rest for word, rest in _stages()[-1] if word == keyword]


def _healthcheck_url() -> httpx.URL:
    """The URL the image's HEALTHCHECK opens (the quoted one in its ``python -c`` command)."""
    [healthcheck] = _final("HEALTHCHECK")
    command: list[str] = json.loads(healthcheck.partition("CMD ")[2])
    return httpx.URL(command[-1].split("'")[1])


def test_the_image_serves_on_all_interfaces_on_the_deployments_port() -> None:
    """The image's entrypoint is ``cascade serve`` on 0.0.0.0 and the port it exposes, the port
    its health check and the Deployment use."""
    [entrypoint] = _final("ENTRYPOINT")
    options = _serve_options(json.loads(entrypoint))
    assert options.host == "0.0.0.0"
    assert _final("EXPOSE") == [str(options.port)]
    assert _healthcheck_url().port == options.port
    assert _container(PROXY)["ports"][0]["containerPort"] == options.port


def test_the_image_runs_as_the_fixed_non_root_user_of_the_manifests() -> None:
    """The final stage's USER is a fixed numeric non-root uid, the one the pods run as, and its
    working directory (the default spool's folder) is the spool volume's mount."""
    [user] = _final("USER")
    uid = int(user.split(":")[0])
    assert uid != 0
    assert PROXY["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid
    [workdir] = _final("WORKDIR")
    mounts = {m["mountPath"] for m in _container(PROXY)["volumeMounts"]}
    assert workdir in mounts


def test_the_final_stage_copies_the_environment_and_builds_nothing() -> None:
    """The final stage starts from the build stage's base, takes only the built environment, and
    installs no package (no compiler, no pip, no sources)."""
    build, final = _stages()[0], _stages()[-1]
    assert build[0][1].split()[0] == final[0][1].split()[0] == "python:3.11-slim"
    assert _final("COPY") == ["--from=build /opt/cascade /opt/cascade"]
    for command in _final("RUN"):
        assert not {"pip", "apt-get", "apt"} & set(shlex.split(command)), command


def test_the_cpu_and_gpu_images_differ_only_in_the_onnxruntime_extra() -> None:
    """ONNX_EXTRA is the Dockerfile's only build argument and is read only by the install, which
    takes cascade-router's extra of that name and deploy/onnxruntime-<extra>.txt, whose packages
    are that extra's own."""
    instructions = [i for stage in _stages() for i in stage]
    assert [rest for word, rest in instructions if word == "ARG"] == ["ONNX_EXTRA=cpu"]
    readers = [rest for word, rest in instructions if "ONNX_EXTRA}" in rest]
    assert len(readers) == 1
    assert "[api,${ONNX_EXTRA}]" in readers[0]
    assert '"deploy/onnxruntime-${ONNX_EXTRA}.txt"' in readers[0]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = pyproject["project"]["optional-dependencies"]
    for extra in ("cpu", "gpu"):
        lines = (DEPLOY / f"onnxruntime-{extra}.txt").read_text(encoding="utf-8").splitlines()
        wanted = {Requirement(r).name for r in extras[extra]}
        listed = {Requirement(r).name for r in lines if r and not r.startswith("#")}
        assert listed == wanted, extra


def test_the_build_context_leaves_out_the_local_environment() -> None:
    """The virtualenv, git history, caches and local databases never reach the image's context."""
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines())
    assert {".git", ".venv", "**/__pycache__", "*.db", "*.spool*"} <= ignored
