"""rankflow: training."""
