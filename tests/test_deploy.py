"""
The deployment files: the Dockerfile passes hadolint, every Kubernetes
manifest passes kubernetes-validate --strict, and the compose file says
what a platform team expects.  (The image itself is built and run by
docker/ci-image-test, which `make test` runs where podman is installed.)
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from twisted.trial.unittest import TestCase

from tests.support import processTest, requireTool

DOCKER = Path(__file__).resolve().parent.parent / "docker"


def tool(name: str) -> str:
    """
    A command from the [deploy] extra, installed beside this Python.
    """
    return requireTool(name)


@processTest
class DockerfileTests(TestCase):
    def test_hadolint(self) -> None:
        result = subprocess.run(
            [tool("hadolint"), "--no-color", "--failure-threshold", "warning",
             str(DOCKER / "Dockerfile")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_conventions(self) -> None:
        text = (DOCKER / "Dockerfile").read_text()
        self.assertRegex(text, r"(?m)^ARG BASE_IMAGE=debian:bookworm-slim$")
        self.assertRegex(text, r"(?m)^USER 10001:10001$")
        self.assertRegex(text, r"(?m)^STOPSIGNAL SIGTERM$")
        self.assertRegex(text, r"(?m)^EXPOSE 27015$")
        self.assertIn("HEALTHCHECK", text)
        self.assertIn('"--pidfile="', text)
        self.assertIn("org.opencontainers.image.licenses", text)
        self.assertEqual(len(re.findall(r"(?m)^FROM ", text)), 2)


@processTest
class KubernetesTests(TestCase):
    def test_manifestsValidate(self) -> None:
        manifests = sorted(
            str(p)
            for p in (DOCKER / "k8s").glob("*.yaml")
            if p.name != "kustomization.yaml"
        )
        result = subprocess.run(
            [tool("kubernetes-validate"), "--strict", *manifests],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(result.stdout.count(" passed "), len(manifests), result.stdout)

    def test_kustomizationListsEveryManifest(self) -> None:
        kustomization = yaml.safe_load(
            (DOCKER / "k8s" / "kustomization.yaml").read_text()
        )
        files = {p.name for p in (DOCKER / "k8s").glob("*.yaml")} - {
            "kustomization.yaml"
        }
        self.assertEqual(set(kustomization["resources"]), files)

    def test_gracefulTermination(self) -> None:
        deployment = yaml.safe_load((DOCKER / "k8s" / "deployment.yaml").read_text())
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        self.assertGreater(pod["terminationGracePeriodSeconds"], 25 + 5)
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertEqual(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault"
        )
        security = container["securityContext"]
        self.assertTrue(security["readOnlyRootFilesystem"])
        self.assertFalse(security["allowPrivilegeEscalation"])
        self.assertEqual(security["capabilities"]["drop"], ["ALL"])
        self.assertEqual(container["readinessProbe"]["httpGet"]["path"], "/readyz")
        self.assertEqual(container["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.assertIn("preStop", container["lifecycle"])
        self.assertEqual(deployment["spec"]["replicas"], 3)


@processTest
class ComposeTests(TestCase):
    def test_composeConfig(self) -> None:
        """
        podman-compose resolves the file, with and without the haproxy
        profile (it refuses malformed files).
        """
        requireTool("podman")
        for profile in ([], ["--profile", "haproxy"]):
            result = subprocess.run(
                [tool("podman-compose"), "-f", str(DOCKER / "compose.yaml"), *profile,
                 "config"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            self.assertEqual(result.returncode, 0, result.stderr)
            resolved = yaml.safe_load(result.stdout)
            self.assertIn("myserver", resolved["services"])

    def test_compose(self) -> None:
        compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
        service = compose["services"]["myserver"]
        self.assertTrue(service["read_only"])
        self.assertEqual(service["cap_drop"], ["ALL"])
        self.assertIn("no-new-privileges:true", service["security_opt"])
        self.assertIn("healthcheck", service)
        self.assertEqual(service["restart"], "unless-stopped")
        self.assertIn("limits", service["deploy"]["resources"])
        grace = int(service["stop_grace_period"].rstrip("s"))
        self.assertGreater(
            grace, int(service["environment"]["MYSERVER_SHUTDOWN_TIMEOUT"])
        )
        proxied = compose["services"]["myserver-proxied"]
        self.assertEqual(proxied["profiles"], ["haproxy"])
        self.assertEqual(proxied["command"], ["--listen", "haproxy:tcp:27016"])
        self.assertEqual(compose["services"]["haproxy"]["profiles"], ["haproxy"])
        self.assertIn("send-proxy-v2", (DOCKER / "haproxy.cfg").read_text())
