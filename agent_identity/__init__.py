"""Agent identity SDK."""
