"""Data sources and batching (the fixture source until the Grain pipeline lands)."""
