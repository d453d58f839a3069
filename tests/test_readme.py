"""README stays true: its configuration table is the one the Settings class describes."""

from __future__ import annotations

from pathlib import Path

from vitasync_fhir.config import markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_configuration_table_matches_settings() -> None:
    text = README.read_text()
    start = text.index("| variable | default | meaning |")
    end = text.index("\n\n", start)
    assert text[start : end + 1] == markdown_table(), (
        "README's configuration table is stale: python -m vitasync_fhir.config prints it"
    )
