"""Where the client finds its base URL and credentials.

In order: the arguments of :class:`automl.Client`, then the environment
(``AUTOML_BASE_URL``, ``AUTOML_API_KEY``, ``AUTOML_TOKEN``, ``AUTOML_PROFILE``), then
the config file (``$AUTOML_CONFIG`` or ``~/.config/automl/config.toml``, honouring
``XDG_CONFIG_HOME``), one table per profile::

    [default]
    base_url = "https://automl.example.com"
    api_key = "aml_..."

The CLI's ``automl login`` writes it with :func:`save_config` (mode 0600). An API key
(``aml_...``) and a session token (``ams_...``) are both sent as ``Authorization:
Bearer``; the API key wins when both are set.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from automl.errors import ConfigError

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_PROFILE = "default"
_KEYS = ("base_url", "api_key", "token")


def _mask(secret: str | None) -> str | None:
    if not secret:
        return None
    return f"{secret[:4]}…" if len(secret) > 8 else "…"


@dataclass(frozen=True)
class Config:
    """A base URL and credentials. Its repr never shows a secret whole."""

    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    profile: str = DEFAULT_PROFILE

    @property
    def credential(self) -> str | None:
        return self.api_key or self.token

    def auth_headers(self) -> dict[str, str]:
        cred = self.credential
        return {"Authorization": f"Bearer {cred}"} if cred else {}

    def __repr__(self) -> str:
        return (
            f"Config(base_url={self.base_url!r}, api_key={_mask(self.api_key)!r},"
            f" token={_mask(self.token)!r}, profile={self.profile!r})"
        )


def config_path() -> Path:
    """``$AUTOML_CONFIG``, else ``$XDG_CONFIG_HOME/automl/config.toml``
    (``~/.config/automl/config.toml``)."""
    given = os.environ.get("AUTOML_CONFIG")
    if given:
        return Path(given).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "automl" / "config.toml"


def read_config_file(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every profile of the config file ({} when there is none)."""
    path = path or config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def load_config(
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    token: str | None = None,
    profile: str | None = None,
    path: Path | None = None,
    use_env: bool = True,
    use_file: bool = True,
) -> Config:
    """The configuration: arguments, then the environment, then the config file."""
    env = os.environ if use_env else {}
    profile = profile or env.get("AUTOML_PROFILE") or DEFAULT_PROFILE
    stored = read_config_file(path).get(profile, {}) if use_file else {}
    given_cred = api_key or token
    env_cred = env.get("AUTOML_API_KEY") or env.get("AUTOML_TOKEN")
    if given_cred:
        key, tok = api_key, token
    elif env_cred:
        key, tok = env.get("AUTOML_API_KEY") or None, env.get("AUTOML_TOKEN") or None
    else:
        key, tok = stored.get("api_key"), stored.get("token")
    url = base_url or env.get("AUTOML_BASE_URL") or stored.get("base_url") or DEFAULT_BASE_URL
    for name, value in (("base_url", url), ("api_key", key), ("token", tok)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name} of profile {profile!r} must be a string")
    return Config(base_url=str(url).rstrip("/"), api_key=key, token=tok, profile=profile)


def _toml_string(value: str) -> str:
    out = value.replace("\\", "\\\\").replace('"', '\\"')
    for ch, esc in (("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")):
        out = out.replace(ch, esc)
    return f'"{out}"'


def save_config(
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    token: str | None = None,
    profile: str = DEFAULT_PROFILE,
    path: Path | None = None,
    clear: bool = False,
) -> Path:
    """Write (merge into) a profile of the config file, readable by its owner only.

    Values given as None are kept as they were, unless ``clear`` (then the profile
    is replaced: ``automl logout`` is ``save_config(clear=True)``). Returns the path."""
    path = path or config_path()
    profiles = read_config_file(path)
    current = {} if clear else dict(profiles.get(profile, {}))
    for name, value in (("base_url", base_url), ("api_key", api_key), ("token", token)):
        if value is not None:
            current[name] = value
    profiles[profile] = current
    lines: list[str] = []
    for name, values in profiles.items():
        if lines:
            lines.append("")
        lines.append(f"[{_toml_string(name)}]")
        for k, v in values.items():
            if isinstance(v, str):
                lines.append(f"{k} = {_toml_string(v)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def with_overrides(config: Config, **changes: Any) -> Config:
    return replace(config, **{k: v for k, v in changes.items() if k in _KEYS})
