"""The scheduler service: picks and atomically claims a node for each instance."""
