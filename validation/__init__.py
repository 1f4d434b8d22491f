"""rankflow: validation."""
