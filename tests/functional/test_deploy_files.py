"""What can be checked here of the container and cluster files (there is no Docker engine to run them)."""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_compose_file_parses_with_the_four_services() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(compose["services"]) == {"kafka", "postgres", "worker", "sink"}
    for name in ("worker", "sink"):
        service = compose["services"][name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert service["environment"]["BADGESTREAM_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert compose["services"]["worker"]["command"] == ["worker"]
    assert compose["services"]["sink"]["command"] == ["sink"]


def test_kubernetes_manifests_have_the_expected_kinds() -> None:
    documents = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "badgestream.yaml").read_text()) if d]
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in documents)
    assert kinds == [
        ("ConfigMap", "badgestream"),
        ("Deployment", "badgestream-sink"),
        ("Secret", "badgestream-secrets"),
        ("Service", "badgestream-worker"),
        ("StatefulSet", "badgestream-worker"),
    ]
    config = next(d for d in documents if d["kind"] == "ConfigMap")["data"]
    workers = next(d for d in documents if d["kind"] == "StatefulSet")
    assert workers["spec"]["replicas"] <= int(config["BADGESTREAM_TOPIC_PARTITIONS"])
    for document in documents:
        if document["kind"] in ("StatefulSet", "Deployment"):
            container = document["spec"]["template"]["spec"]["containers"][0]
            assert container["args"][0] in {"worker", "sink"}
    secret = next(d for d in documents if d["kind"] == "Secret")
    assert "BADGESTREAM_DATABASE_URL" in secret["stringData"]
    assert "BADGESTREAM_DATABASE_URL" not in config


def test_dockerfile_installs_the_package_and_runs_the_cli() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "pip install ." in dockerfile
    assert 'ENTRYPOINT ["badgestream"]' in dockerfile
    assert "USER badgestream" in dockerfile
