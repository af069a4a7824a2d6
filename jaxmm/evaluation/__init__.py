"""Evaluators: arrays in, records out (ROI agreement, metric statistics, feature analysis)."""
