"""dbt models as sources: a ``ref`` resolved through the project's compiled ``manifest.json`` to the relation
dbt built it as, with no dbt installation at run time."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Model:
    """A dbt model as the manifest describes it."""

    unique_id: str  # model.<package>.<name>
    name: str
    package: str
    relation: str  # as dbt renders it for the warehouse: "db"."schema"."table"
    database: str = ""
    schema: str = ""
    alias: str = ""  # the table's name in the warehouse

    def is_table(self, catalog: str, schema: str, name: str) -> bool:
        """Whether a table a query names (its parts empty where it does not say) is this model's relation."""
        return (
            name.lower() == self.alias.lower()
            and (not schema or schema.lower() == self.schema.lower())
            and (not catalog or catalog.lower() == self.database.lower())
        )


class Manifest:
    """The models of a dbt project's ``manifest.json``."""

    def __init__(self, project: str, models: list[Model], disabled: set[str]) -> None:
        self.project = project
        self._models = models
        self._disabled = disabled

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """The manifest at ``path``; ValueError saying what is wrong with it."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"no such file: {path} (run `dbt parse` or `dbt build` to write it)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read {path}: {exc}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("nodes"), dict):
            raise ValueError(f"{path} is not a dbt manifest (no nodes)")
        models = [_model(node) for node in raw["nodes"].values() if _is_model(node)]
        disabled = {
            str(node.get("name"))
            for nodes in (raw.get("disabled") or {}).values()
            for node in (nodes if isinstance(nodes, list) else [])
            if _is_model(node)
        }
        project = str((raw.get("metadata") or {}).get("project_name") or "")
        return cls(project, models, disabled)

    @property
    def models(self) -> list[Model]:
        return list(self._models)

    def model_of(self, catalog: str, schema: str, name: str) -> Model | None:
        """The model whose relation is the table a query names (parts empty where it does not say), if any."""
        return next((m for m in self._models if m.is_table(catalog, schema, name)), None)

    def model(self, ref: str) -> Model:
        """The model ``ref`` names (``name`` or ``package.name``); ValueError when it is unknown, disabled,
        ambiguous or has no relation (ephemeral)."""
        package, _, name = ref.rpartition(".")
        found = [m for m in self._models if m.name == name and (not package or m.package == package)]
        if len(found) > 1:
            local = [m for m in found if m.package == self.project]
            if len(local) != 1:
                names = ", ".join(f"{m.package}.{m.name}" for m in found)
                raise ValueError(f"dbt model {ref!r} is ambiguous ({names}); name its package")
            found = local
        if not found:
            if name in self._disabled:
                raise ValueError(f"dbt model {ref!r} is disabled in the manifest")
            raise ValueError(f"no dbt model named {ref!r} in the manifest")
        if not found[0].relation:
            raise ValueError(f"dbt model {ref!r} is ephemeral: it has no relation to read")
        return found[0]


def _is_model(node: Any) -> bool:
    return isinstance(node, dict) and node.get("resource_type") == "model"


def _model(node: dict[str, Any]) -> Model:
    return Model(
        unique_id=str(node.get("unique_id") or ""),
        name=str(node.get("name") or ""),
        package=str(node.get("package_name") or ""),
        relation=str(node.get("relation_name") or ""),
        database=str(node.get("database") or ""),
        schema=str(node.get("schema") or ""),
        alias=str(node.get("alias") or node.get("name") or ""),
    )


def ref_query(model: Model) -> str:
    """The query a ``ref`` stands for: every column of the model's relation."""
    return f"SELECT * FROM {model.relation}"
