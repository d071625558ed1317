"""Example host apps that use the sse_gateway package (each has its own README)."""
