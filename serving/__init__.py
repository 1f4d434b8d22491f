"""rankflow: serving."""
