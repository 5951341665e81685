"""Security headers on every response (plain ASGI, so streamed bodies pass untouched).

- `Strict-Transport-Security` only on HTTPS requests (`depot serve --tls-cert/--tls-key`, or a
  TLS-terminating proxy whose `X-Forwarded-Proto` uvicorn trusts): over plain HTTP the header
  is meaningless and browsers ignore it.
- `X-Content-Type-Options: nosniff`: a DICOM or JSON body is never reinterpreted as a page.
- `Referrer-Policy: no-referrer`: URLs carry pseudonymous UIDs; they stay out of other sites' logs.
- `X-Frame-Options: DENY` and a `Content-Security-Policy` that allows nothing, except on the
  interactive API documentation pages (`/docs`, `/redoc`), which load their scripts and styles.
Headers the application set itself are kept.
"""

from __future__ import annotations

HSTS = b"max-age=31536000; includeSubDomains"
_ALWAYS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_DOC_PAGES = ("/docs", "/redoc")


class SecurityHeadersMiddleware:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = list(_ALWAYS)
        if not scope.get("path", "").startswith(_DOC_PAGES):
            extra.append(_CSP)
        if scope.get("scheme") == "https":
            extra.append((b"strict-transport-security", HSTS))

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _value in headers}
                headers.extend((n, v) for n, v in extra if n not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
