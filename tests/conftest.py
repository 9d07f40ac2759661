"""Test settings: hypothesis keeps no example database in the working tree."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("negmine", database=None, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "negmine"))
