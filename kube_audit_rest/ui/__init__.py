"""``kube-audit-rest ui``: a read-only web UI over an index of the audit log.

``index`` follows the log files into the database, ``db`` holds the schema
and the timeline query (SQLAlchemy Core: SQLite or PostgreSQL), ``safety``
keeps Secret values out of the index and the pages, ``app`` is the Flask
application and ``cli`` the command.
"""
