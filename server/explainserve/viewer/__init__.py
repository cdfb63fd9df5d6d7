"""Views of explanations for people: the `explainserve explain` client, the terminal rendering
and the self-contained HTML page. Imports no torch (a client of a running server)."""
