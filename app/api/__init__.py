"""The blueprints, by feature."""
