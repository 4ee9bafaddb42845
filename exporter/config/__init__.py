"""Configuration: YAML reading (`yaml`), pydantic models (`schema`), loading (`config`)."""

from .config import config_from_dict, config_path_from, load_config
from .durations import Duration, PositiveDuration, format_duration, parse_duration
from .schema import Config
from .yaml import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "Duration",
    "PositiveDuration",
    "config_from_dict",
    "config_path_from",
    "format_duration",
    "load_config",
    "parse_duration",
]
