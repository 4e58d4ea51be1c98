"""The README's configuration tables are the ones `scripts/settings_table.py` generates from
the settings classes: a new, renamed or re-documented setting fails here until
`python scripts/settings_table.py --write` is run."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "scripts" / "settings_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_configuration_tables_match_the_settings_classes() -> None:
    table = _script()
    readme = (ROOT / "README.md").read_text()
    existing = table.current(readme)
    assert existing is not None, "README.md lacks the settings-table markers"
    section = readme[readme.index("## Configuration\n") :]
    assert table.BEGIN in section.split("\n## ", 1)[0], "the tables belong in the Configuration section"
    assert existing == table.render(), "README.md is out of date: run python scripts/settings_table.py --write"


def test_every_listed_setting_is_documented_and_no_secret_shows_a_default() -> None:
    table = _script()
    classes = table.settings_classes()
    assert {name for name, _ in classes} >= {"puller", "controller"}
    for service, cls in classes:
        undocumented = [name for name, field in cls.model_fields.items() if not field.description]
        assert undocumented == [], f"{service}: fields without a docstring: {undocumented}"
        for name, field in cls.model_fields.items():
            if table._is_secret(field.annotation):
                assert table.default_text(field) == "—", f"{service}.{name} shows a secret's default"


def test_the_generator_notices_drift(tmp_path: Path) -> None:
    table = _script()
    block = table.render()
    assert table.current(f"intro\n{block}\nrest") == block
    stale = block.replace("Memory for models on this pod.", "Memory for models.")
    assert table.current(f"intro\n{stale}\n") != block
    assert table.current("no markers here") is None
