"""What the daemon starts and stops: the token, the app, the server and the endpoint file, in one place.

    web = WebService(ops, settings.web, state_dir, gpus=gpu_list)
    url = web.start()      # http://127.0.0.1:8742/#token=...  (print it; `supervisorctl web-url` reprints it)
    ...
    web.stop()
"""

from __future__ import annotations

import logging
from pathlib import Path

from supervisor.api.ops import Operations
from supervisor.settings import WebConfig
from supervisor.web.app import GpuSource, create_app
from supervisor.web.server import WebServer
from supervisor.web.templates import BUNDLED_TEMPLATES
from supervisor.web.token import load_or_create_token, remove_endpoint, write_endpoint

log = logging.getLogger("ml_supervisor.web")
__all__ = ["BUNDLED_TEMPLATES", "WebService", "templates_dir_of"]


def templates_dir_of(config: WebConfig) -> Path:
    """The folder of launchable templates: ``web.templates_dir``, else the example configs the package ships."""
    return Path(config.templates_dir).expanduser().resolve() if config.templates_dir else BUNDLED_TEMPLATES


class WebService:
    """The web page of one daemon. ``start()`` returns the URL to open (with the token)."""

    def __init__(self, ops: Operations, config: WebConfig, state_dir: str | Path, *,
                 gpus: GpuSource | None = None) -> None:
        self.ops = ops
        self.config = config
        self.state_dir = Path(state_dir)
        self.gpus = gpus
        self.server: WebServer | None = None

    def start(self) -> str:
        """Serve the page; raises ``SupervisorError`` (one line) when the address cannot be bound."""
        token = load_or_create_token(self.state_dir)
        templates = templates_dir_of(self.config)
        if not templates.is_dir():
            log.warning("web: the template folder %s does not exist; the launch page will be empty", templates)
        app = create_app(self.ops, token=token, templates_dir=templates, gpus=self.gpus)
        self.server = WebServer(app, self.config.host, self.config.port)
        self.server.start()
        assert self.server.port is not None
        write_endpoint(self.state_dir, self.config.host, self.server.port)
        log.info("web: serving %s (templates from %s)", self.server.url, templates)
        return self.server.url_with_token(token)

    @property
    def url(self) -> str | None:
        """The page's address without the token (None when not serving)."""
        return self.server.url if self.server is not None and self.server.port is not None else None

    def stop(self) -> None:
        """Stop serving and forget the address (idempotent)."""
        if self.server is not None:
            self.server.stop()
            self.server = None
            remove_endpoint(self.state_dir)
