"""Optimizer and schedule, the jitted train step, the loop."""
