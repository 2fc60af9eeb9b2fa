"""The ChartMogul account the ChartMogul-API-compatible receiver serves: customers and contacts, indexed by the
fields the API finds them by, and the custom attributes defined; seeded from a CSV or JSON file."""

from __future__ import annotations

import csv
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The fields records are found by, indexed so that a million-customer account answers a lookup at once.
_INDEXED = {"customer": ("external_id", "email"), "contact": ("email", "customer_external_id", "customer_uuid")}


@dataclass
class Account:
    """The customers and contacts of one ChartMogul account, and its custom attribute definitions."""

    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    customer_attributes: dict[str, str] = field(default_factory=dict)  # key → type
    _made: int = field(default=0, repr=False)  # records made so far: the next one's id
    _index: dict[tuple[str, str, Any], dict[str, None]] = field(default_factory=dict, repr=False)

    def add_customer(self, external_id: str, email: str | None = None, name: str | None = None, **extra: Any) -> str:
        uuid_ = extra.pop("uuid", None) or f"cus_{uuid.uuid4()}"
        self._made += 1
        self.customers[uuid_] = {
            "uuid": uuid_,
            "id": self._made,
            "external_id": external_id,
            "external_ids": [external_id],
            "email": email or "",
            "name": name or "",
            "attributes": {"custom": {}, "tags": []},
        }
        self._indexed("customer", self.customers[uuid_], add=True)
        return uuid_

    def add_contact(self, customer_uuid: str, email: str | None = None, **fields: Any) -> str:
        customer = self.customers[customer_uuid]
        uuid_ = fields.pop("uuid", None) or f"con_{uuid.uuid4()}"
        self.contacts[uuid_] = {
            "uuid": uuid_,
            "customer_uuid": customer_uuid,
            "customer_external_id": customer["external_id"],
            "email": email,
            **{k: fields.get(k) for k in ("first_name", "last_name", "title", "phone", "linked_in", "twitter")},
            "custom": {},
        }
        self._indexed("contact", self.contacts[uuid_], add=True)
        return uuid_

    def delete_customer(self, customer_uuid: str) -> None:
        customer = self.customers.pop(customer_uuid, None)
        if customer is not None:
            self._indexed("customer", customer, add=False)
        for contact in self.find("contact", customer_uuid=customer_uuid):
            self.delete_contact(contact["uuid"])

    def delete_contact(self, contact_uuid: str) -> None:
        contact = self.contacts.pop(contact_uuid, None)
        if contact is not None:
            self._indexed("contact", contact, add=False)

    def merge_customers(self, from_uuid: str, into_uuid: str) -> None:
        """``from_uuid`` is merged into ``into_uuid``: gone, its external ids (and contacts) now the other's."""
        merged, into = self.customers[from_uuid], self.customers[into_uuid]
        for contact in self.find("contact", customer_uuid=from_uuid):
            self._indexed("contact", contact, add=False)
            contact.update(customer_uuid=into_uuid, customer_external_id=into["external_id"])
            self._indexed("contact", contact, add=True)
        self.delete_customer(from_uuid)
        into["external_ids"] = [*into["external_ids"], *merged["external_ids"]]
        for external_id in merged["external_ids"]:
            self._index.setdefault(("customer", "external_id", external_id), {})[into_uuid] = None

    def set_contact_field(self, contact: dict[str, Any], name: str, value: Any) -> None:
        self._indexed("contact", contact, add=False)
        contact[name] = value
        self._indexed("contact", contact, add=True)

    def find(self, kind: str, **filters: Any) -> list[dict[str, Any]]:
        """The customers or contacts whose fields equal ``filters`` (all of them), in the order they were added."""
        records = self.customers if kind == "customer" else self.contacts
        indexed = [(name, value) for name, value in filters.items() if name in _INDEXED[kind]]
        if indexed:
            name, value = indexed[0]
            candidates = [records[u] for u in self._index.get((kind, name, value), {}) if u in records]
        else:
            candidates = list(records.values())
        return [r for r in candidates if all(_holds(r, n, v) for n, v in filters.items())]

    def customer_by_external_id(self, external_id: str) -> str | None:
        found = self.find("customer", external_id=external_id)
        return str(found[0]["uuid"]) if found else None

    def _indexed(self, kind: str, record: Mapping[str, Any], *, add: bool) -> None:
        for name in _INDEXED[kind]:
            key = (kind, name, record.get(name))
            if add:
                self._index.setdefault(key, {})[record["uuid"]] = None
            else:
                self._index.get(key, {}).pop(record["uuid"], None)


def _holds(record: Mapping[str, Any], name: str, value: Any) -> bool:
    """Whether a record has ``value`` for ``name``: a merged customer has each of its ``external_ids``."""
    if name == "external_id" and "external_ids" in record:
        return bool(value in record["external_ids"])
    return bool(record.get(name) == value)


def load_account(path: Path) -> Account:
    """An account seeded from a JSON or CSV file (module docstring)."""
    account = Account()
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as handle:
            for line, row in enumerate(csv.DictReader(handle), start=2):
                if not row.get("external_id"):
                    raise ValueError(f"{path}: line {line} has no external_id")
                customer = account.add_customer(row["external_id"], row.get("email"), row.get("name"))
                account.add_contact(customer, row.get("email"), first_name=row.get("first_name"))
        return account
    data = json.loads(path.read_text())
    for index, raw in enumerate(data.get("customers", [])):
        if not isinstance(raw, dict) or not raw.get("external_id"):
            raise ValueError(f"{path}: customers[{index}] has no external_id")
        contacts = raw.pop("contacts", [])
        customer = account.add_customer(**raw)
        for contact in contacts:
            account.add_contact(customer, **contact)
    return account
