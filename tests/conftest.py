"""Shared pytest configuration: hypothesis profiles.

"ci" (60 examples) is loaded when the CI environment variable is set,
"dev" (100 examples) otherwise. Neither has a deadline: the engine's
first call per test warms caches and scapy is slow to import.
"""

import os

from hypothesis import settings

settings.register_profile("ci", max_examples=60, deadline=None)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
