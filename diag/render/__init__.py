"""Renderers: each reads only the report dict (schema diag.report/1) and writes one output."""
