"""rankflow: kernels."""
