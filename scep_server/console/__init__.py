"""The admin console: HTML pages at /admin/ over the same services as the admin API (README "Console").

``sessions``: the server-side sessions (a table; the cookie holds a random id, the row its SHA-256);
``web``: the pages, their sign-in, CSRF tokens and security headers.
"""
