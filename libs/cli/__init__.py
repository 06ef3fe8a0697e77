"""The tetsu command line."""
