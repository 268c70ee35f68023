"""What each bake step stores, as dataclasses: the source, the bake, its quality, its profile
and the package manifest.

Each record reads and writes the plain JSON its asset has always stored (``from_dict`` /
``to_dict``), so partitions materialized before still load, and says what a person reads in the
UI (``metadata()``: plain values; ``Markdown`` and ``pathlib.Path`` mark a table and a file).
The core stays free of Dagster: ``assets/metadata.py`` turns these values into metadata.
"""
