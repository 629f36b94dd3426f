"""Structure: prunable groups, blocks and heads, the importance criterion, and applying a plan."""
