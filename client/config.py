"""Where the client finds the service and its key: a flag, else the environment, else the config file.

    # ~/.config/secateurs/config.toml  (or $XDG_CONFIG_HOME/secateurs/config.toml)
    url = "https://secateurs.example.com"
    api_key = "sk_..."
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 installs tomli (pyproject.toml)
    import tomli as tomllib

DEFAULT_URL = "http://127.0.0.1:8000"
KEYS = ("url", "api_key")


class ConfigError(ValueError):
    """The config file exists but cannot be used."""


def config_path() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".config"  # the XDG spec ignores relative paths
    return base / "secateurs" / "config.toml"


def load_config(path: Path | None = None) -> dict[str, str]:
    """The file's settings; empty when there is no file."""
    path = path or config_path()
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(KEYS)}")
    for key, value in raw.items():
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {key} must be a string")
    return raw


def resolve(url: str | None = None, api_key: str | None = None) -> tuple[str, str | None]:
    """The service URL and key: the arguments, else SECATEURS_URL / SECATEURS_API_KEY, else the config file."""
    url = url or os.environ.get("SECATEURS_URL") or None
    api_key = api_key or os.environ.get("SECATEURS_API_KEY") or None
    if url is None or api_key is None:
        file = load_config()
        url = url or file.get("url")
        api_key = api_key or file.get("api_key")
    return (url or DEFAULT_URL).rstrip("/"), api_key
