"""Configuration: paths and settings with their defaults."""
