"""Test helpers that several test folders need, kept in one place instead of one copy a folder.

The tests run with ``--import-mode=importlib``, which puts nothing on sys.path, and fixtures do
not cross test folders. tests/conftest.py therefore puts the tests/ folder on sys.path once, so
every folder imports these modules as ``support.<module>``; a folder's conftest.py imports the
fixtures it wants from them (which registers them there, under the same names as before).
Modules that are also imported outside pytest (tests/scaleout/stack.py, which
bench/bench_scaleout.py uses) put tests/ on sys.path themselves.

- :mod:`support.net`: free loopback ports, "does anything answer on this port".
- :mod:`support.apt`: apt-get install for a system package a test needs (root only).
- :mod:`support.postgres`: the running PostgreSQL or a throwaway cluster, fresh databases.
- :mod:`support.chromium`: Debian's chromium + chromium-driver and a headless Selenium driver.
- :mod:`support.approvals_page`: the approvals page served on a free loopback port.
- :mod:`support.llm_stub_server`: a loopback server speaking the Anthropic, OpenAI and Gemini
  wire protocols (tests and bench/bench_llm.py start it; it is not shipped in the wheel).
- :mod:`support.llm_stub`: fixtures for support.llm_stub_server on loopback.
- :mod:`support.evaluation`: a real evaluation system whose quality a test can turn down.
"""
