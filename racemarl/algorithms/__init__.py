"""The learning: MATD3, FACMAC, RACE (continuous and discrete) and the evolutionary operators."""
