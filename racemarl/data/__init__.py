"""The data: replay buffers of transitions (continuous tasks) and of whole episodes (discrete tasks)."""
