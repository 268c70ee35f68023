"""The health checks behind ``flowstone doctor``, one module per thing FlowStone depends on.

Why: a failed run is a slow and noisy way to learn that PostgreSQL is down, a key is not set
or the dbt manifest is stale. Each check takes a few hundred milliseconds, changes nothing a
user cares about (the object store probe writes and deletes one small object), and returns
ok, warn or fail with the sentence that fixes it (:mod:`.result`). :mod:`.runner` runs them
side by side. The Dagster instance check needs Dagster, so its Dagster half lives in the
wiring (``assets/instance_check.py``) and is registered with the runner by the CLI; its plain
half is :mod:`.instance`.
"""
