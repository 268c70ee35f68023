"""Operations: ``flowstone doctor`` and the health checks behind it."""
