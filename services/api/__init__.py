"""The HTTP API service (FastAPI): instances, nodes, ports, flavors, images, networks."""
