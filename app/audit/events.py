"""FHIR R4 AuditEvent resources, after the IHE Basic Audit Log Patterns (BALP).

Pure builders: no database, no FastAPI. What goes in is chosen so that nothing identifying
can: at the ingest boundary only the route template (its path holds the original
StudyInstanceUID), on the research surface only pseudonymous UIDs from the path, and of the
query only parameter names and values that are UIDs, dates, numbers or codes of known
parameters; any other value is replaced by its length. Never a token secret, never a file
name (`depot ingest` inputs are often named after the patient), never a re-identification's
result or its free-text reason.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
TOKEN_SYSTEM = "urn:imaging-depot:token"
GRANT_SYSTEM = "urn:imaging-depot:grant"  # a compute grant (its id, never its token)
OIDC_SYSTEM = "urn:imaging-depot:oidc-subject"  # the identity provider's `sub`
ROLE_SYSTEM = "urn:imaging-depot:role"
OPERATOR_SYSTEM = "urn:imaging-depot:operator"  # the OS account running `depot …`
PROJECT_SYSTEM = "urn:imaging-depot:project"
PSEUDONYM_SYSTEM = "urn:imaging-depot:patient-pseudonym"
UID_SYSTEM = "urn:dicom:uid"

# Outcomes (R4 AuditEvent.outcome)
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = "0", "4", "8", "12"

_DCM_DISPLAY = {
    "110100": "Application Activity",
    "110103": "DICOM Instances Accessed",
    "110106": "Export",
    "110107": "Import",
    "110110": "Patient Record",
    "110112": "Query",
    "110113": "Security Alert",
    "110137": "User Security Attributes Changed",
}
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_UID_LIST = re.compile(r"^[0-9]+(\.[0-9]+)*(,[0-9]+(\.[0-9]+)*)*$")
_DATE_OR_NUMBER = re.compile(r"^[0-9]{0,14}(\.[0-9]{1,6})?(-[0-9]{0,14}(\.[0-9]{1,6})?)?$")
_PARAM_NAME = re.compile(r"^[A-Za-z0-9_.()-]{1,64}$")
_CODE = re.compile(r"^[A-Za-z0-9_.,/+;:=*-]{1,64}$")
_PSEUDONYM = re.compile(r"^P[A-Z2-7]{15}$")
PROJECT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")  # as app.projects.PROJECT_ID
# Parameters whose values are codes or options, never a person's data: kept as given.
CODE_PARAMETERS = frozenset(
    {
        "Modality", "ModalitiesInStudy", "00080060", "00080061", "includefield",
        "fuzzymatching", "emptyvaluematching", "multiplevaluematching", "limit", "offset",
        "requestType", "contentType", "transferSyntax", "quality", "window", "viewport",
        "rows", "columns", "frameNumber", "annotation", "charset", "anonymize",
        "date", "agent", "action", "_count", "_cursor",
    }
)  # fmt: skip
MAX_PARAMETERS = 40
MAX_ENTITIES = 1000


def coding(system: str, code: str, display: str | None = None) -> dict:
    c = {"system": system, "code": code}
    if display is None and system == DCM:
        display = _DCM_DISPLAY.get(code)
    if display:
        c["display"] = display
    return c


def redacted(value: str) -> str:
    return f"<redacted: {len(value)} characters>"


def safe_value(name: str, value: str) -> str:
    """The value as recorded: UIDs, dates, numbers and codes of known parameters as given."""
    if len(value) <= 64 * 20 and _UID_LIST.match(value):
        return value
    if _DATE_OR_NUMBER.match(value) and len(value) <= 64:
        return value
    if name in CODE_PARAMETERS and _CODE.match(value):
        return value
    return redacted(value)


def uids_in(value: str) -> list[str]:
    return value.split(",") if _UID_LIST.match(value) and len(value) <= 64 * 20 else []


@dataclass(frozen=True, slots=True)
class Agent:
    """Who: a token (id and role, never the secret) or the OS account running the CLI."""

    kind: str  # "token", "grant", "oidc", "operator", "anonymous"
    identifier: str = ""  # token / grant id, IdP subject, OS user; "" when unauthenticated
    role: str = ""
    address: str = ""
    note: str = ""  # e.g. "token of project beta", "unverified token"

    @property
    def index_value(self) -> str:
        return self.identifier[:64]

    def resource(self, participation: str) -> dict:
        agent: dict = {
            "type": {"coding": [coding(PARTICIPATION, participation)]},
            "requestor": True,
        }
        system = _AGENT_SYSTEMS.get(self.kind)
        if system is not None:
            agent["who"] = {"identifier": {"system": system, "value": self.identifier}}
        else:
            agent["who"] = {"display": "unauthenticated"}
        if self.note:
            agent["who"]["display"] = self.note
        if self.role:
            agent["role"] = [{"coding": [coding(ROLE_SYSTEM, self.role)]}]
        if self.address:
            # 1 = machine name, 2 = IP address
            kind = "2" if re.match(r"^[0-9a-fA-F.:]+$", self.address) else "1"
            agent["network"] = {"address": self.address[:255], "type": kind}
        return agent


_AGENT_SYSTEMS = {
    "token": TOKEN_SYSTEM,
    "grant": GRANT_SYSTEM,
    "oidc": OIDC_SYSTEM,
    "operator": OPERATOR_SYSTEM,
}


def operator_agent(user: str) -> Agent:
    return Agent("operator", identifier=user[:64], role="cli", address=socket.gethostname())


def _source(where: str) -> dict:
    return {
        "site": "imaging-depot",
        "observer": {"display": f"imaging-depot {where} on {socket.gethostname()}"},
        "type": [coding(SOURCE_TYPE, "4", "Application Server")],
    }


def project_entity(project_id: str | None, details: Sequence[tuple[str, str]] = ()) -> dict:
    entity: dict = {"type": coding(ENTITY_TYPE, "2", "System Object")}
    if project_id is not None:
        entity["what"] = {"identifier": {"system": PROJECT_SYSTEM, "value": project_id}}
    else:
        entity["what"] = {"display": "no valid project in the request"}
    if details:
        entity["detail"] = [{"type": k, "valueString": v} for k, v in details]
    return entity


def uid_entity(uid: str, level: str) -> dict:
    return {
        "what": {"identifier": {"system": UID_SYSTEM, "value": f"urn:oid:{uid}"}},
        "type": coding(ENTITY_TYPE, "2", "System Object"),
        "description": level,
    }


def _event(
    type_: dict,
    subtypes: Iterable[dict],
    action: str,
    outcome: str,
    description: str,
    agent: Agent,
    participation: str,
    entities: list[dict],
    where: str,
) -> dict:
    event = {
        "resourceType": "AuditEvent",
        "type": type_,
        "action": action,
        "outcome": outcome,
        "outcomeDesc": description,
        "agent": [agent.resource(participation)],
        "source": _source(where),
        "entity": entities,
    }
    subtypes = list(subtypes)
    if subtypes:
        event["subtype"] = subtypes
    return event


# --- HTTP requests ----------------------------------------------------------------------------

_METHOD_ACTION = {"GET": "R", "HEAD": "R", "POST": "C", "PUT": "U", "PATCH": "U", "DELETE": "D"}
_METHOD_INTERACTION = {
    "GET": "read", "HEAD": "read", "POST": "create", "PUT": "update", "PATCH": "patch",
    "DELETE": "delete",
}  # fmt: skip
_PATH_UIDS = (("study_uid", "study"), ("series_uid", "series"), ("sop_uid", "instance"))


def _classify(route_name: str, method: str) -> tuple[dict, str, str]:
    """(type, action, restful interaction) of a route."""
    if route_name.startswith(("stow_ingest", "stow_derived")):
        return coding(DCM, "110107"), "C", "create"
    if route_name.startswith(("qido_", "fhir_search_")) or route_name == "audit_event_search":
        return coding(DCM, "110112"), "E", "search-type"
    if route_name.startswith(("wado_", "fhir_read_")):
        return coding(DCM, "110106"), "R", "read"
    if route_name.startswith("delete_"):
        return coding(DCM, "110103"), "D", "delete"
    if route_name.startswith(("grant_", "member_")) and method != "GET":
        action = "D" if method == "DELETE" else ("C" if method == "POST" else "U")
        return coding(DCM, "110113"), action, _METHOD_INTERACTION.get(method, "operation")
    action = _METHOD_ACTION.get(method, "E")
    return (
        coding(EVENT_TYPE, "rest", "RESTful Operation"),
        action,
        _METHOD_INTERACTION.get(method, "operation"),
    )


def http_outcome(status: int, crashed: bool = False) -> str:
    if crashed:
        return MAJOR_FAILURE
    if status < 400:
        return SUCCESS
    if status < 500:
        return MINOR_FAILURE
    return SERIOUS_FAILURE


def http_event(
    *,
    method: str,
    route_template: str | None,
    route_name: str,
    project_id: str | None,
    path_params: Mapping[str, str],
    query: Sequence[tuple[str, str]],
    status: int,
    agent: Agent,
    crashed: bool = False,
    extra_entities: Sequence[dict] = (),
) -> dict:
    """The AuditEvent of one request to a `/projects/{p}/…` route; `extra_entities` are what
    the route itself named (a grant it issued, a member it changed)."""
    type_, action, interaction = _classify(route_name, method)
    ingest = route_template is None or "/ingest/" in route_template
    template = route_template or "/projects/{project_id}/… (no such route)"
    entities = [project_entity(project_id, [("route", template), ("method", method)])]
    if not ingest:  # the research surface: path UIDs are pseudonymous
        for key, level in _PATH_UIDS:
            value = path_params.get(key)
            if value and len(value) <= 64 and _UID.match(value):
                entities.append(uid_entity(value, level))
    if query:
        details = []
        for name, value in query[:MAX_PARAMETERS]:
            shown = name if _PARAM_NAME.match(name) else redacted(name)
            if ingest:  # the identifiable boundary: names only
                details.append({"type": shown, "valueString": "<not recorded at ingest>"})
                continue
            details.append({"type": shown, "valueString": safe_value(name, value)})
            if not route_name.startswith("audit_"):  # an audit search is not about the UID
                entities.extend(uid_entity(uid, "query") for uid in uids_in(value)[:20])
        if len(query) > MAX_PARAMETERS:
            details.append({"type": "more-parameters", "valueString": str(len(query))})
        entities.append(
            {
                "type": coding(ENTITY_TYPE, "2", "System Object"),
                "role": coding(OBJECT_ROLE, "24", "Query"),
                "detail": details,
            }
        )
    entities.extend(extra_entities)
    description = "server error" if crashed else f"HTTP {status}"
    participation = "IRCP" if action in ("R", "E") else "AUT"
    return _event(
        type_, [coding(RESTFUL, interaction)], action, http_outcome(status, crashed),
        description, agent, participation, entities, "server",
    )  # fmt: skip


# --- CLI and service events -------------------------------------------------------------------


def security_entity(kind: str, identifier: str, details: Sequence[tuple[str, str]] = ()) -> dict:
    """A token, grant or member (by public id, never a secret) as a Security Resource."""
    return {
        "what": {"identifier": {"system": _AGENT_SYSTEMS[kind], "value": identifier[:64]}},
        "type": coding(ENTITY_TYPE, "2", "System Object"),
        "role": coding(OBJECT_ROLE, "13", "Security Resource"),
        "detail": [{"type": name, "valueString": value[:200]} for name, value in details],
    }


def token_event(
    *,
    issued: bool,
    project_id: str | None,
    token_id: str,
    role: str,
    agent: Agent,
    outcome: str,
    kind: str = "token",
    details: Sequence[tuple[str, str]] = (),
) -> dict:
    """A token or grant issued (action C) or revoked (action D): a change of security
    attributes."""
    token = security_entity(kind, token_id, [("role", role), *details])
    entities = [project_entity(project_id), token] if project_id else [token]
    return _event(
        coding(DCM, "110113"), [coding(DCM, "110137")], "C" if issued else "D", outcome,
        f"{kind} issued" if issued else f"{kind} revoked", agent, "AUT", entities, "cli",
    )  # fmt: skip


# A `depot catalog` action on the project's dataset: AuditEvent action, RESTful interaction.
_CATALOG_ACTIONS = {
    "describe": ("U", "update"),
    "publish": ("C", "create"),
    "withdraw": ("D", "delete"),
}


def catalog_event(
    *,
    verb: str,
    project_id: str,
    agent: Agent,
    outcome: str,
    details: Sequence[tuple[str, str]] = (),
) -> dict:
    """A `depot catalog describe|publish|withdraw`: the project and what became of its dataset
    (`details`: status, version), never the description's text."""
    action, interaction = _CATALOG_ACTIONS[verb]
    description = f"dataset {verb}" + ("" if outcome == SUCCESS else " refused")
    entities = [project_entity(project_id, [("catalog", verb), *details])]
    return _event(
        coding(EVENT_TYPE, "rest", "RESTful Operation"), [coding(RESTFUL, interaction)], action,
        outcome, description, agent, "AUT", entities, "cli",
    )  # fmt: skip


def ingest_event(
    *,
    project_id: str,
    agent: Agent,
    files: int,
    stored: int,
    already_present: int,
    failed: int,
    study_uids: Iterable[str],
    aborted: bool = False,
) -> dict:
    """A `depot ingest` run: counts and the pseudonymized study UIDs, never the input paths."""
    outcome = SERIOUS_FAILURE if aborted else (MINOR_FAILURE if failed else SUCCESS)
    counts = [
        ("files", str(files)), ("stored", str(stored)),
        ("already-present", str(already_present)), ("failed", str(failed)),
    ]  # fmt: skip
    entities = [project_entity(project_id, counts)]
    studies = sorted(u for u in study_uids if _UID.match(u) and len(u) <= 64)
    entities.extend(uid_entity(u, "study") for u in studies[:MAX_ENTITIES])
    description = "ingest stopped early" if aborted else f"{stored} stored, {failed} failed"
    return _event(
        coding(DCM, "110107"), [], "C", outcome, description, agent, "AUT", entities, "cli"
    )


def reidentify_event(
    *, project_id: str, pseudonym: str, agent: Agent, outcome: str, reason_given: bool
) -> dict:
    """A re-identification attempt: the pseudonym asked about, never what came back.

    A value that is not shaped like a pseudonym may be anything (a real PatientID typed by
    mistake), so only its length is kept; the reason stays in the vault's own log.
    """
    if _PSEUDONYM.match(pseudonym):
        what = {"identifier": {"system": PSEUDONYM_SYSTEM, "value": pseudonym}}
    else:
        what = {"display": redacted(pseudonym)}
    patient = {
        "what": what,
        "type": coding(ENTITY_TYPE, "1", "Person"),
        "role": coding(OBJECT_ROLE, "1", "Patient"),
        "detail": [{"type": "reason", "valueString": "given" if reason_given else "none"}],
    }
    description = {SUCCESS: "re-identified", MINOR_FAILURE: "no such pseudonym"}.get(
        outcome, "vault error"
    )
    return _event(
        coding(DCM, "110110"), [coding(RESTFUL, "read")], "R", outcome, description, agent,
        "IRCP", [project_entity(project_id), patient], "cli",
    )  # fmt: skip


def entity_index(event: Mapping) -> list[str]:
    """The identifier values of an event's entities (UIDs without `urn:oid:`), for search."""
    values = []
    for entity in event.get("entity", []):
        identifier = entity.get("what", {}).get("identifier", {})
        value = identifier.get("value")
        if isinstance(value, str) and identifier.get("system") != PROJECT_SYSTEM:
            values.append(value.removeprefix("urn:oid:"))
    return values


def agent_index(event: Mapping) -> str:
    for agent in event.get("agent", []):
        value = agent.get("who", {}).get("identifier", {}).get("value")
        if isinstance(value, str):
            return value[:64]
    return ""
