"""A product: its profile (stage 1's caption and tags) and its decision (threshold, verdict, calibration)."""
