"""The daemon's web service: token + app + server + endpoint file, and `supervisorctl web-url`'s reader."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from supervisor.api.ops import Operations
from supervisor.errors import DaemonUnavailable
from supervisor.settings import WebConfig
from supervisor.web.service import BUNDLED_TEMPLATES, WebService, templates_dir_of
from supervisor.web.token import read_token, read_web_url
from tests.support.harness import REPO
from tests.web.conftest import start_supervisor, stop_supervisor


def test_start_prints_a_working_url_and_stop_forgets_it(tmp_path: Path, fake_trainer_env: None) -> None:
    sup = start_supervisor(tmp_path / "state", "fake_trainer")
    try:
        service = WebService(Operations(sup), WebConfig(host="127.0.0.1", port=0, templates_dir=str(REPO / "configs")),
                             sup.state_dir)
        url = service.start()
        page, _, fragment = url.partition("#token=")
        assert fragment == read_token(sup.state_dir) and service.url == page
        assert read_web_url(sup.state_dir) == url
        assert httpx.get(page).status_code == 200
        templates = httpx.get(page + "api/templates", headers={"Authorization": f"Bearer {fragment}"}).json()
        assert "digits" in [t["name"] for t in templates]
        service.stop()
        service.stop()
        assert service.url is None
        with pytest.raises(DaemonUnavailable):
            read_web_url(sup.state_dir)
        with pytest.raises(httpx.ConnectError):
            httpx.get(page, timeout=2)
        # a restarted daemon keeps the token: open pages and scrape configs keep working
        again = WebService(Operations(sup), WebConfig(host="127.0.0.1", port=0), sup.state_dir)
        assert again.start().endswith(f"#token={fragment}")
        again.stop()
    finally:
        stop_supervisor(sup)


def test_templates_dir_defaults_to_the_bundled_configs(tmp_path: Path) -> None:
    # the package's own copy (package data; configs/ links to it), so an installed wheel has them too
    assert templates_dir_of(WebConfig()) == BUNDLED_TEMPLATES == (REPO / "configs").resolve()
    assert templates_dir_of(WebConfig(templates_dir=str(tmp_path))) == tmp_path
