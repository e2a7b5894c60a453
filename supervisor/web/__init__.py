"""The web launcher: an HTTP API over the daemon's operations, a launch page for templates, and /metrics.

``create_app`` (app.py) builds the FastAPI app; ``WebServer`` (server.py) runs
it with uvicorn in a daemon thread; ``token.py`` keeps the owner-only token.
See docs/web.md.
"""
