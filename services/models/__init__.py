"""``harstream models``: which model version carries which TF Serving version label."""
