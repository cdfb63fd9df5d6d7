"""Models ExplainServe serves: the embedded default classifier; user models later."""
