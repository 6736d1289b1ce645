"""The settings this code location was loaded with (defaults < facelake.yaml / $FACELAKE_CONFIG < env)."""

from __future__ import annotations

from functools import lru_cache

from facelake.settings import FacelakeSettings, load_settings


@lru_cache(maxsize=1)
def current_settings() -> FacelakeSettings:
    """Settings read once per process."""
    return load_settings()
