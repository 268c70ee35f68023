"""Storage that survives faults: object stores (local, S3, tiered), a checksummed hybrid codec,
partition-key validation, and the REST and database logic behind FlowStone's I/O managers.

Everything here is plain Python (no Dagster imports) so that it can be tested and reused on its
own; ``io_managers/`` wires it into Dagster.
"""
