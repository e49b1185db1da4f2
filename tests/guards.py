"""How long a test waits for what must happen before calling it a hang.

Generous on purpose: tests assert what happens, not how fast, and CI runs them on a busy 2-core
machine (there a `voice talk` subprocess once took over 120 s just to load its models). A plain
module, not conftest: `from conftest import …` in tests/web would find tests/web/conftest.py.
"""

HANG_GUARD_S = 600.0
