"""The FlowStone code location with the scale-out wiring applied, for the scale-out test and
bench: ``flowstone.definitions`` once it calls ``assets.scaleout.scale_out_definitions`` itself,
until then that call made here. Loaded by the daemon's code server, the run workers and the
Celery workers through the workspace file the test writes."""

import flowstone.definitions as _location  # a module, so only `defs` is a Definitions here
from assets.scaleout import scale_out_definitions

defs = (
    _location.defs if _location.defs.executor is not None else scale_out_definitions(_location.defs)
)
