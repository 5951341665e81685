"""Access: who the caller is (JWTs of the embedded issuer or the hospital's IdP, compute
grants, legacy static tokens), what each role may do, and the check every route makes.

Domain modules never import FastAPI; `app.auth.http` is the only one that does.
"""
