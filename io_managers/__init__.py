"""FlowStone."""
