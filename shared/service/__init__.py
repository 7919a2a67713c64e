"""What both services do alike, so each does it once: the one package under shared/ that may
import FastAPI (the rest of shared/ is a library and never does).

    handlers.py     install_error_handlers: every error -> {"error", "message"} with its status
    docs.py         install_docs: /docs (Swagger UI, no CDN), its files, /favicon.ico
    migrations.py   migrate: an SQLite file's schema, versioned by PRAGMA user_version
    flags.py        settings flags of ``latentwire sender|receiver``, help from the fields' descriptions
"""
