"""The management API: projects and members (site admins), compute grants (data managers)."""
