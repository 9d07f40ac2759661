"""Test settings: hypothesis keeps no example database and writes its caches
outside the working tree."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "negmine-hypothesis")
settings.register_profile("negmine", database=None, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "negmine"))
