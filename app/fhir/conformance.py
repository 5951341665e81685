"""Does an emitted resource conform to the profiles it declares? A checker for the tests.

Driven by the compiled StructureDefinitions in `fhir_profiles/fsh-generated/resources` (what
SUSHI made of the FSH), not by a hand-written list of rules, so a profile and its check cannot
drift apart: change the FSH, recompile, and the check changes with it.

`problems(resource)` returns what is wrong, as sentences (empty: conforms):

1. the resource must parse with the `fhir.resources` R4B models. That covers the base
   specification: datatypes, unknown elements, and the cardinalities FHIR core itself sets
   (ImagingStudy.status, series.uid, instance.sopClass, Provenance.recorded...). SUSHI leaves
   those out of our differentials because restating them changes nothing;
2. for each `meta.profile` under our canonical base, every element of the profile's
   differential: minimum cardinality through arrays (each series' each instance),
   `max` 0 (absent) and other maxima, `fixed[x]` (equal), `pattern[x]` (contained; an array in
   the pattern is matched by any item of the instance's array), Reference `targetProfile` (the
   reference names the target's resource type; for our own profiles, the type they
   constrain), choice types, slices (`value` and `pattern` discriminators, extension slices by
   url) and the profiles of their types (an extension is checked against its definition);
3. a resource of a type one of our profiles constrains must declare one of them: an
   ImagingStudy without `meta.profile` is not "nothing to check" but a resource the server
   should not emit.

Profile URLs outside our base (a BALP AuditEvent's, say) are not checked and not a problem;
one under our base that no compiled StructureDefinition has is. A Bundle is parsed whole and
each entry's resource (and each contained resource) is checked against its profiles.

The snapshot is not needed: what the base specification requires is left to step 1, and
everything our profiles add is in their differentials. Invariants (FHIRPath) are not
evaluated; our profiles declare none.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANONICAL = "https://w3id.org/imaging-depot/fhir"
PROFILES_DIR = Path(__file__).resolve().parents[2] / "fhir_profiles" / "fsh-generated" / "resources"
CORE = "http://hl7.org/fhir/StructureDefinition/"
_MISSING = object()


@functools.cache
def load_profiles(directory: Path = PROFILES_DIR) -> dict[str, dict]:
    """Canonical URL → StructureDefinition, for every compiled definition in `directory`.

    Cached: the tests call `problems` for every resource they see. The result is shared,
    so do not edit it in place; copy it (`copy.deepcopy`) and pass the copy to `problems`."""
    profiles: dict[str, dict] = {}
    for path in sorted(Path(directory).glob("StructureDefinition-*.json")):
        definition = json.loads(path.read_text(encoding="utf-8"))
        profiles[definition["url"]] = definition
    return profiles


def problems(resource: dict, profiles: Mapping[str, dict] | None = None) -> list[str]:
    """What keeps `resource` (a FHIR R4 resource as JSON) from conforming; empty if nothing.

    `profiles` (URL → StructureDefinition) defaults to `load_profiles()`."""
    if profiles is None:
        profiles = load_profiles()
    found = _parse_problems(resource)
    _Checker(profiles, found).resource(resource, _label(resource))
    return found


# --- step 1: the R4B models ---------------------------------------------------------------


def _parse_problems(resource: dict) -> list[str]:
    # Imported here: fhir.resources is a test dependency, and building its models costs more
    # than the server's whole answer (app/fhir/common.py says why the server does not use it).
    from fhir.resources.R4B import get_fhir_model_class

    label = _label(resource)
    try:
        model = get_fhir_model_class(str(resource.get("resourceType")))
    except (KeyError, ValueError):
        return [f"{label}: unknown resourceType {resource.get('resourceType')!r}"]
    parse = getattr(model, "model_validate", None) or model.parse_obj  # pydantic 2, or 1
    try:
        parse(resource)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError in both versions
        return [f"{label}: does not parse as FHIR R4B {model.__name__}: {exc}"]
    return []


# --- step 2: the differentials --------------------------------------------------------------


@dataclass
class _Node:
    """One element of a differential, with the elements under it and its slices."""

    name: str
    element: dict = field(default_factory=dict)
    children: dict[str, _Node] = field(default_factory=dict)
    slices: dict[str, _Node] = field(default_factory=dict)


def _tree(definition: dict) -> _Node:
    """The differential as a tree, by element id (`Type.a.b:slice.c`)."""
    root = _Node(definition["type"])
    for element in definition.get("differential", {}).get("element", []):
        node = root
        for segment in element["id"].split(".")[1:]:
            name, _, slice_name = segment.partition(":")
            node = node.children.setdefault(name, _Node(name))
            if slice_name:
                node = node.slices.setdefault(slice_name, _Node(name))
        node.element = element
    return root


class _Unsupported(Exception):
    """A differential uses something this checker does not evaluate: reported, never passed."""


class _Checker:
    """One `problems` call: walks resources and differentials, appending to `found`."""

    def __init__(self, profiles: Mapping[str, dict], found: list[str]) -> None:
        self.profiles = profiles
        self.found = found
        self.contained: dict[str, str] = {}
        # the resource types our profiles constrain (not Extension: those are not resources)
        self.profiled_types = {
            d["type"]: sorted(u for u, p in profiles.items() if p["type"] == d["type"])
            for d in profiles.values()
            if d.get("kind") == "resource"
        }

    # resources

    def resource(self, resource: dict, label: str) -> None:
        if resource.get("resourceType") == "Bundle":
            for index, entry in enumerate(resource.get("entry") or []):
                inner = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(inner, dict):
                    self.resource(inner, f"{label} entry[{index}] {_label(inner)}")
        contained = [c for c in resource.get("contained") or [] if isinstance(c, dict)]
        for item in contained:
            self.resource(item, f"{label} contained {_label(item)}")
        self.contained = {str(c.get("id")): str(c.get("resourceType")) for c in contained}

        declared = [str(url).partition("|")[0] for url in _meta_profiles(resource)]
        ours = [url for url in declared if url.startswith(CANONICAL + "/")]
        kind = resource.get("resourceType")
        if kind in self.profiled_types and not ours:
            expected = ", ".join(self.profiled_types[kind])
            self.found.append(f"{label}: declares none of our {kind} profiles ({expected})")
        for url in ours:
            definition = self.profiles.get(url)
            if definition is None:
                self.found.append(f"{label}: unknown profile {url}")
            elif definition.get("type") != kind:
                self.found.append(
                    f"{label}: profile {definition['id']} constrains {definition.get('type')}, "
                    f"not {kind}"
                )
            else:
                self.conforms(resource, definition, label, str(kind))

    def conforms(self, value: dict, definition: dict, label: str, path: str) -> None:
        """Check `value` (a resource, or a datatype such as an Extension) against one
        StructureDefinition's differential."""
        try:
            self.children(_tree(definition), value, label, path, definition["id"])
        except _Unsupported as exc:
            self.found.append(f"{label}: {definition['id']}: cannot check: {exc}")

    # elements

    def children(self, node: _Node, value: dict, label: str, path: str, sd: str) -> None:
        for child in node.children.values():
            self.element(child, value, label, path, sd)

    def element(self, node: _Node, parent: dict, label: str, path: str, sd: str) -> None:
        items = list(_items(parent, node.name, path))
        here = f"{path}.{node.name}"
        self.cardinality(node.element, len(items), label, here, sd)
        self.choice_types(node, parent, label, path, sd)
        for where, item in items:
            self.value(node.element, item, label, where, sd)
        if node.slices:
            self.sliced(node, items, label, here, sd)
        for where, item in items:
            if isinstance(item, dict):
                self.children(node, item, label, where, sd)

    def sliced(
        self, node: _Node, items: list[tuple[str, Any]], label: str, here: str, sd: str
    ) -> None:
        slicing = node.element.get("slicing")
        if not slicing or not slicing.get("discriminator"):
            raise _Unsupported(f"{here} has slices but no discriminator in the differential")
        in_a_slice = [False] * len(items)
        for name, slice_node in node.slices.items():
            matched = []
            for index, (where, item) in enumerate(items):
                if self.in_slice(slice_node, slicing["discriminator"], item):
                    matched.append((where, item))
                    in_a_slice[index] = True
            self.cardinality(slice_node.element, len(matched), label, f"{here}:{name}", sd)
            for where, item in matched:
                self.value(slice_node.element, item, label, where, sd)
                if isinstance(item, dict):
                    self.children(slice_node, item, label, where, sd)
        if slicing.get("rules") == "closed":
            for (where, _), inside in zip(items, in_a_slice, strict=True):
                if not inside:
                    self.found.append(f"{label}: {where}: in none of the slices ({sd})")

    def in_slice(self, slice_node: _Node, discriminators: list[dict], item: Any) -> bool:
        for discriminator in discriminators:
            kind, path = discriminator.get("type"), discriminator.get("path", "")
            if kind not in ("value", "pattern"):
                raise _Unsupported(f"discriminator type {kind!r} (only value and pattern)")
            target, values = slice_node, [item]
            if path != "$this":
                for name in path.split("."):
                    target = target.children.get(name, _Node(name))
                    values = [v for value in values for _, v in _items(value, name, "")]
            expected, exact = _expected(target.element)
            if expected is _MISSING and path == "url":  # an extension slice: its profile's url
                profiles = [
                    p for t in slice_node.element.get("type", []) for p in t.get("profile", [])
                ]
                expected, exact = (profiles[0], True) if profiles else (_MISSING, True)
            if expected is _MISSING:
                raise _Unsupported(f"no fixed or pattern value at discriminator path {path!r}")
            if not any(v == expected if exact else _contains(v, expected) for v in values):
                return False
        return True

    def cardinality(self, element: dict, count: int, label: str, where: str, sd: str) -> None:
        low, high = element.get("min"), element.get("max")
        if low is not None and count < low:
            self.found.append(f"{label}: {where}: {count} present, at least {low} required ({sd})")
        if high == "0" and count:
            self.found.append(f"{label}: {where}: must be absent ({sd})")
        elif high not in (None, "*", "0") and count > int(high):
            self.found.append(f"{label}: {where}: {count} present, at most {high} allowed ({sd})")

    def value(self, element: dict, item: Any, label: str, where: str, sd: str) -> None:
        expected, exact = _expected(element)
        if expected is not _MISSING:
            if exact and item != expected:
                self.found.append(
                    f"{label}: {where}: must be {_show(expected)}, is {_show(item)} ({sd})"
                )
            elif not exact and not _contains(item, expected):
                self.found.append(
                    f"{label}: {where}: does not match the pattern {_show(expected)}, "
                    f"is {_show(item)} ({sd})"
                )
        for kind in element.get("type") or []:
            if kind.get("code") == "Reference" and kind.get("targetProfile"):
                self.reference(kind["targetProfile"], item, label, where, sd)
            for url in kind.get("profile") or []:
                if url in self.profiles and isinstance(item, dict):
                    self.conforms(item, self.profiles[url], label, where)
                elif url.startswith(CANONICAL + "/"):
                    self.found.append(f"{label}: {where}: unknown profile {url} ({sd})")

    def reference(self, targets: list[str], item: Any, label: str, where: str, sd: str) -> None:
        allowed = set()
        for url in targets:
            if url in self.profiles:
                allowed.add(self.profiles[url]["type"])
            elif url.startswith(CORE):
                allowed.add(url[len(CORE) :])
            else:
                raise _Unsupported(f"{where}: target profile {url} is neither core nor ours")
        if "Resource" in allowed:
            return
        reference = item.get("reference") if isinstance(item, dict) else None
        if not isinstance(reference, str):
            self.found.append(
                f"{label}: {where}: no reference (expected {' or '.join(sorted(allowed))}) ({sd})"
            )
            return
        kind = self._reference_type(reference)
        if kind not in allowed:
            self.found.append(
                f"{label}: {where}: {reference!r} is not a reference to "
                f"{' or '.join(sorted(allowed))} ({sd})"
            )

    def _reference_type(self, reference: str) -> str | None:
        """The resource type a reference names: `Type/id`, `<base>/Type/id[/_history/v]`, or a
        contained resource (`#id`)."""
        if reference.startswith("#"):
            return self.contained.get(reference[1:])
        parts = reference.split("/_history/")[0].split("/")
        return parts[-2] if len(parts) >= 2 and not reference.startswith("urn:") else None

    def choice_types(self, node: _Node, parent: dict, label: str, path: str, sd: str) -> None:
        """`value[x] only string`: no valueInteger etc."""
        if not node.name.endswith("[x]") or not node.element.get("type"):
            return
        stem = node.name[:-3]
        allowed = {stem + t["code"][:1].upper() + t["code"][1:] for t in node.element["type"]}
        for key in parent:
            bare = key.lstrip("_")
            is_choice = bare.startswith(stem) and bare[len(stem) : len(stem) + 1].isupper()
            if is_choice and bare not in allowed:
                shown = ", ".join(sorted(allowed))
                self.found.append(f"{label}: {path}.{key}: type not allowed (only {shown}) ({sd})")


# --- helpers --------------------------------------------------------------------------------


def _items(parent: Any, name: str, path: str) -> Iterator[tuple[str, Any]]:
    """(where, item) for each occurrence of element `name` in `parent`: each item of an array,
    each type of a choice (`value[x]`); a primitive present only through its `_name`
    extensions counts as present."""
    if not isinstance(parent, dict):
        return
    if name.endswith("[x]"):
        stem = name[:-3]
        keys = [k for k in parent if k.startswith(stem) and k[len(stem) : len(stem) + 1].isupper()]
    elif name in parent:
        keys = [name]
    else:
        keys = [f"_{name}"] if f"_{name}" in parent else []
    for key in keys:
        value = parent[key]
        if isinstance(value, list):
            for index, item in enumerate(value):
                yield f"{path}.{key}[{index}]", item
        elif value is not None:
            yield f"{path}.{key}", value


def _expected(element: dict) -> tuple[Any, bool]:
    """The element's fixed[x] (exact) or pattern[x] value, or _MISSING."""
    for key, value in element.items():
        if key.startswith("fixed"):
            return value, True
        if key.startswith("pattern"):
            return value, False
    return _MISSING, True


def _contains(value: Any, pattern: Any) -> bool:
    """FHIR pattern matching: every property of the pattern is in the value, recursively; an
    array in the pattern is matched item by item by any item of the value's array."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            key in value and _contains(value[key], sub) for key, sub in pattern.items()
        )
    if isinstance(pattern, list):
        items = value if isinstance(value, list) else [value]
        return all(any(_contains(item, sub) for item in items) for sub in pattern)
    return value == pattern


def _meta_profiles(resource: dict) -> list:
    meta = resource.get("meta")
    profiles = meta.get("profile") if isinstance(meta, dict) else None
    return profiles if isinstance(profiles, list) else []


def _label(resource: dict) -> str:
    kind = resource.get("resourceType", "?")
    return f"{kind}/{resource['id']}" if resource.get("id") else str(kind)


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."
