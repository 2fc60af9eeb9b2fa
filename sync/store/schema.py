"""Bringing a state store's schema up to date with the Alembic migrations, or refusing one that is newer."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

import sync
from sync.errors import StoreError


def migrations_dir() -> Path:
    """``migrations/`` in a source checkout, or its copy inside an installed wheel."""
    package = Path(sync.__file__).resolve().parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise StoreError("the Alembic migrations are missing from this installation")


def alembic_config(engine: Engine) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["engine"] = engine
    return config


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def known_revisions(engine: Engine) -> set[str]:
    """Every revision this version's migrations know."""
    return {revision.revision for revision in ScriptDirectory.from_config(alembic_config(engine)).walk_revisions()}


def ensure_schema(engine: Engine, *, upgrade: bool = True) -> None:
    """Upgrade the schema to this version's head; refuse a schema this version does not know."""
    config = alembic_config(engine)
    script = ScriptDirectory.from_config(config)
    current = current_revision(engine)
    known = {revision.revision for revision in script.walk_revisions()}
    if current is not None and current not in known:
        raise StoreError(
            f"the state store's schema (revision {current}) is newer than this version of "
            "audience-sync knows; upgrade audience-sync before using this store"
        )
    if current == script.get_current_head():
        return
    if not upgrade:
        raise StoreError("the state store's schema is out of date; run `audience-sync migrate`")
    command.upgrade(config, "head")
