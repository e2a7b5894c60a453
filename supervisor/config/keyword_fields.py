"""A config key that is a Python keyword (``checkpoint.async``) in an OmegaConf structured config.

A dataclass cannot declare a field named ``async``. OmegaConf builds a structured config
from ``dataclasses.fields()`` and the class's type hints, so renaming the field there
(after the class is made under a legal name) gives the config, the YAML, the overrides,
the error messages and ``to_yaml`` the user's key, with no mapping in the loader.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def keyword_field(cls: type, python_name: str, key: str) -> None:
    """Make the dataclass field ``python_name`` of ``cls`` known (to OmegaConf) as ``key``.

    The instance keeps ``python_name`` as well: ``__init__`` takes either name, and ``key``
    reads it (``getattr(obj, key)``, which is how OmegaConf reads an instance).
    """
    fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    field = fields.pop(python_name)
    field.name = key
    fields[key] = field
    cls.__annotations__[key] = cls.__annotations__[python_name]
    setattr(cls, key, property(lambda self: getattr(self, python_name)))
    init = cls.__init__  # type: ignore[misc]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if key in kwargs:
            kwargs[python_name] = kwargs.pop(key)
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[misc]
    assert key in {f.name for f in dataclasses.fields(cls)}
