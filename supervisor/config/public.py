"""A job config as it may be shown or uploaded (the W&B run's config, pages): no secrets in it.

``env`` values are replaced by ``<set>`` (the names stay: they say what the job
sets), and ``${oc.env:...}`` interpolations stay as written, never resolved.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

ENV_PLACEHOLDER = "<set>"


def public_config(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` as a plain mapping without the values of its environment (see the module docstring)."""
    # resolve=False: a loaded config is resolved already, except the interpolations that read the
    # environment (see loader.to_yaml), which must stay unresolved here.
    container = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(container, dict)
    env = container.get("env") or {}
    container["env"] = {str(name): ENV_PLACEHOLDER for name in env}
    return {str(k): v for k, v in container.items()}
