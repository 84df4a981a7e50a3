"""The read-only /rollouts page and the rollout gauges on a real server's metrics port, read by a real
headless browser (Debian's chromium): every rollout, its waves, devices per wave and gate numbers, and
attacker-influenced text (a --where expression, gate reasons) shown as text, never run."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_release_server import MODEL, _serve, copy_of, offered, publish_three

from edgerec.registry import Registry
from edgerec.server.release import rollouts
from edgerec.server.release.gates import GateThresholds
from edgerec.server.release.page import render_rollouts
from edgerec.server.release.policy import update_policy

HOSTILE = "<img src=x onerror=alert(1)></td><script>document.title='owned'</script>"


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return publish_three(tmp_path_factory.mktemp("rollouts-page"))


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _browser_dom(url: str, profile: Path) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=2000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_page_shows_waves_devices_and_gates_and_runs_nothing(published: Registry, tmp_path: Path) -> None:
    registry = copy_of(published, tmp_path)
    update_policy(registry, MODEL, lambda p: dataclasses.replace(p, channels={"stable": 2}))
    where = f'region in ("eu", "{HOSTILE}")'
    policy = update_policy(
        registry,
        MODEL,
        lambda p: rollouts.start_rollout(
            p, version=3, published=[1, 2, 3], now=time.time(), waves=(50, 100), where=where
        ),
    )
    rollout = policy.rollouts[-1]
    server = _serve(registry, metrics_port=0)
    try:
        assert server.rollouts is not None and server.fleet is not None
        for i in range(30):
            offered(server, f"phone-{i}", current=2, region="eu")
        server.fleet.flush()
        server.rollouts.thresholds = GateThresholds(min_devices=3, silent_after_s=60)
        server.rollouts.tick(now=time.time() + 3600)  # none of them reported: silent, the wave fails
        url = f"http://127.0.0.1:{server.metrics_port}"
        dom_text = _browser_dom(f"{url}/rollouts", tmp_path / "chromium")
        dom = _Dom()
        dom.feed(dom_text)
        text = " ".join(dom.text)
        assert "script" not in dom.tags and "img" not in dom.tags, "hostile text became markup"
        assert HOSTILE in text, "shown as text, exactly"
        assert rollout.id in text and "halted" in text and "silent" in text
        assert dom.tags.count("section") == 2  # the model and its one rollout
        with urllib.request.urlopen(f"{url}/rollouts", timeout=30) as response:
            assert "script-src" not in response.headers["Content-Security-Policy"]
            assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
        with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
            metrics = response.read().decode()
        assert f'edgerec_rollout_state{{model="{MODEL}",rollout="{rollout.id}",state="halted"}} 1.0' in metrics
        assert f'edgerec_rollout_percent{{model="{MODEL}",rollout="{rollout.id}"}} 50.0' in metrics
    finally:
        server.stop(grace=0)


def test_the_page_shows_a_rollouts_own_gate_thresholds(published: Registry, tmp_path: Path) -> None:
    registry = copy_of(published, tmp_path)
    update_policy(registry, MODEL, lambda p: dataclasses.replace(p, channels={"stable": 2}))
    update_policy(
        registry,
        MODEL,
        lambda p: rollouts.start_rollout(
            p, version=3, published=[1, 2, 3], now=time.time(), gate_thresholds={"max_install_failure_rate": 0.01}
        ),
    )
    dom = _Dom()
    dom.feed(render_rollouts(registry, None).decode())
    assert "max_install_failure_rate=0.01" in dom.text
