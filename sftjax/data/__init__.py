"""Data: sources, formats and templates, loss masks, amounts and mixing, packing and stages (the Grain pipeline)."""
