"""The read-only web dashboard: pages (jinja2 templates, SVG charts) and live updates from the bus."""
