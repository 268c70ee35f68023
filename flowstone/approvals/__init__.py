"""Human approval gates: a durable store of requests and decisions, its state machine, signed
links to the approvals page, and the ``flowstone approvals`` CLI. No Dagster imports here."""
