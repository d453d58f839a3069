"""The official R4 search definitions as data (see build.py for their source)."""
