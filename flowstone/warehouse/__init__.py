"""The evaluation warehouse: long-format frames FlowStone writes to DuckDB and the marts dbt
builds from them, read back without Dagster."""
