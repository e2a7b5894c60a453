"""Job configs: the schema (``schema``), durations and the validating loader."""

from supervisor.config.durations import format_duration, parse_duration
from supervisor.config.loader import build_job_config, load_job_config, parse_job_config, to_yaml
from supervisor.config.patterns import name_override
from supervisor.config.schema import JobConfig

__all__ = [
    "JobConfig",
    "build_job_config",
    "format_duration",
    "load_job_config",
    "name_override",
    "parse_duration",
    "parse_job_config",
    "to_yaml",
]
