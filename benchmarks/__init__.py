"""Reproducible performance runs (`make bench`): figures, request counts and ratios, as JSON."""
