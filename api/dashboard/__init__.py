"""The web dashboard: static files served by the API itself (no separate server, no CDN)."""
