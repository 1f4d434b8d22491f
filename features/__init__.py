"""rankflow: features."""
