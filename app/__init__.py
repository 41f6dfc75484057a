"""User-facing entry points of omnistream: the HTTP/streaming servers, the UI, the command-line
interface (`python -m app`) and client helpers.  Everything here talks to the engine through its
public API and holds no model code of its own."""
