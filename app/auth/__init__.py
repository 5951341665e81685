"""Access: bearer tokens bound to a project and a role, and the check every route makes.

Domain modules (roles, tokens) never import FastAPI; `app.auth.http` is the only one that does.
"""
