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


def test_every_default_in_the_table_is_a_value() -> None:
    """A default made by a factory is shown as its value, not as pydantic's placeholder."""
    table = markdown_table()
    assert "PydanticUndefined" not in table
    assert "| `VITASYNC_CORS_ORIGINS` | `[]` |" in table
