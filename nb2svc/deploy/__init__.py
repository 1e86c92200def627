"""Deploy and operate: one Engine interface, an adapter per cluster engine, and the image catalog."""
