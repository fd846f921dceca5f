"""Policy hot reload from a Kubernetes ConfigMap volume, whose files the kubelet swaps atomically.

The kubelet never writes a mounted ConfigMap's file in place. The volume holds a timestamped
directory with the real files, a symlink ``..data`` to it, and one symlink per key
(``default.yaml -> ..data/default.yaml``). An update writes a new timestamped directory, points a
temporary symlink at it, renames that over ``..data`` (one atomic step) and deletes the old
directory. :class:`ConfigMapVolume` does the same in a temporary directory, so the running proxy
sees exactly what it would see in a pod.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import structlog.testing

from cascade.server.app import create_app
from cascade.server.settings import ServerSettings
from tests.servers import serving, wait_until
from tests.upstreams import ScriptedTier

POLICY = """\
name: configmap
tiers:
  - name: small
    model: distill-1.5b
    kind: self_hosted
    endpoint: {small}/v1
    price: {{gpu_usd_per_hour: 3.6, tokens_per_second: 1000}}
    threshold: {threshold}
  - name: medium
    model: distill-7b
    kind: self_hosted
    endpoint: {medium}/v1
    price: {{gpu_usd_per_hour: 3.6, tokens_per_second: 1000}}
"""


class ConfigMapVolume:
    """A directory laid out and updated the way the kubelet's atomic writer does it."""

    def __init__(self, root: Path, key: str) -> None:
        self.root = root
        self.key = key
        self._generation = 0

    @property
    def path(self) -> Path:
        """The path a pod's container reads: ``<mount>/<key>``, a symlink through ``..data``."""
        return self.root / self.key

    def publish(self, text: str) -> None:
        """Write ``text`` as the key's new content: new directory, ``..data`` swapped by a rename,
        old directory removed."""
        self._generation += 1
        fresh = self.root / f"..2025_01_01_00_00_{self._generation:02d}.000000001"
        fresh.mkdir()
        (fresh / self.key).write_text(text, encoding="utf-8")
        data = self.root / "..data"
        old = Path(os.readlink(data)) if data.is_symlink() else None
        temporary = self.root / "..data_tmp"
        temporary.symlink_to(fresh.name)
        temporary.rename(data)
        if not self.path.is_symlink():
            self.path.symlink_to(Path("..data") / self.key)
        if old is not None:
            shutil.rmtree(self.root / old)


@dataclass
class Pod:
    """Two scripted tiers behind a proxy whose policy lives in a ConfigMap volume."""

    url: str
    volume: ConfigMapVolume
    small: str
    medium: str

    def policy(self, threshold: float) -> str:
        """The policy text with ``small``'s threshold set to ``threshold``."""
        return POLICY.format(small=self.small, medium=self.medium, threshold=threshold)

    def tier(self) -> str:
        """The tier that answers a plain question now."""
        body = {"model": "cascade", "messages": [{"role": "user", "content": "What is 2+2?"}]}
        reply = httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=30)
        reply.raise_for_status()
        return reply.headers["x-cascade-tier"]


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    """The proxy started on ``<mount>/default.yaml`` the way the Deployment starts it."""
    small, medium = ScriptedTier("small"), ScriptedTier("medium")
    with serving(small.app()) as small_url, serving(medium.app()) as medium_url:
        volume = ConfigMapVolume(tmp_path / "policies", "default.yaml")
        volume.root.mkdir()
        volume.publish(POLICY.format(small=small_url, medium=medium_url, threshold=0.0))
        settings = ServerSettings(policies=(str(volume.path),), reload_interval_s=0.05)
        with serving(create_app(settings)) as url:
            yield Pod(url, volume, small_url, medium_url)


def test_a_configmap_update_reaches_the_running_proxy(pod: Pod) -> None:
    """Each kubelet-style swap of the mounted policy applies without a restart, the second
    one too (the first swap deleted the directory the proxy started from)."""
    assert pod.tier() == "small"
    with structlog.testing.capture_logs() as logs:
        pod.volume.publish(pod.policy(threshold=1.0))
        assert wait_until(lambda: pod.tier() == "medium")
        pod.volume.publish(pod.policy(threshold=0.0))
        assert wait_until(lambda: pod.tier() == "small")
    assert [e["event"] for e in logs if e["event"].startswith("policy.reload")] == [
        "policy.reloaded",
        "policy.reloaded",
    ]


def test_a_bad_configmap_update_keeps_the_policy_in_force(pod: Pod) -> None:
    """An invalid policy pushed through the ConfigMap is refused and logged; the proxy goes on
    routing with the last good one, and takes the next good update."""
    with structlog.testing.capture_logs() as logs:
        pod.volume.publish(pod.policy(threshold=1.0).replace("kind: self_hosted", "kind: x", 1))
        assert wait_until(lambda: any(e["event"] == "policy.reload_refused" for e in logs))
    assert pod.tier() == "small"
    pod.volume.publish(pod.policy(threshold=1.0))
    assert wait_until(lambda: pod.tier() == "medium")
