"""The distributed runtime: naming, settings, discovery, request plane, event plane."""
