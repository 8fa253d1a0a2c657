"""Settings and brand files.

Owns: settings read from the environment (`config.settings`), the brand/campaign file schema and
its loader with line-accurate errors (`config.brand`, `config.loader`), and the database engine
factory shared by every package (`config.database`).

May import: nothing from flashtag. Every other package may import `config`.
"""
