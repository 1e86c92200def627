"""Jinja2 templates and backend files: data, shipped inside the nb2svc package as nb2svc.templates."""
