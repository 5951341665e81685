"""OpenTelemetry traces and metrics, with nothing identifying in them.

`setup_telemetry` reads the standard `OTEL_*` variables: `OTEL_TRACES_EXPORTER` and
`OTEL_METRICS_EXPORTER` (`otlp`, `console`, or any exporter installed under the
`opentelemetry_*_exporter` entry points; `otlp` honours `OTEL_EXPORTER_OTLP_PROTOCOL`), and the
SDK itself reads the rest (`OTEL_EXPORTER_OTLP_*`, `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`, `OTEL_METRIC_EXPORT_INTERVAL`…). Unlike the SDK's
auto-configuration, an unset exporter means `none`: no SDK is built and the API's no-op
providers stay, so an unconfigured server pays nothing.

What goes into spans and metrics is limited to counts, byte sizes, outcome and cause codes,
route templates, methods, status codes, project ids and profile names: never a file name, a
raw URL path or query (the ingest route's path holds the ORIGINAL StudyInstanceUID), a UID, a
header value or an exception message (exceptions are recorded as their type name only).

Hooks never raise on the telemetry's account: the API swallows SDK errors, exporters fail
in their own threads, and the little computing done here is guarded. No FastAPI: the request
middleware is plain ASGI.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from app import __version__

log = logging.getLogger(__name__)

SERVICE_NAME = "imaging-depot"
_SCOPE = "app.telemetry"
_PROJECT_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")  # app.projects.PROJECT_ID

Attributes = Mapping[str, str | int | float | bool]


@dataclass(frozen=True)
class Telemetry:
    """The tracer and the instruments every hook uses."""

    tracer: trace.Tracer
    http_requests: metrics.Counter
    http_duration: metrics.Histogram
    ingest_instances: metrics.Counter
    ingest_bytes: metrics.Counter
    wado_bytes: metrics.Counter
    active_grants: metrics.ObservableGauge

    @classmethod
    def from_providers(
        cls, tracer_provider: trace.TracerProvider, meter_provider: metrics.MeterProvider
    ) -> Telemetry:
        meter = meter_provider.get_meter(_SCOPE, __version__)
        return cls(
            tracer=tracer_provider.get_tracer(_SCOPE, __version__),
            http_requests=meter.create_counter(
                "depot.http.requests", "{request}", "HTTP requests served"
            ),
            http_duration=meter.create_histogram(
                "depot.http.duration", "s", "HTTP request duration, body sent included"
            ),
            ingest_instances=meter.create_counter(
                "depot.ingest.instances", "{instance}", "Files ingested, by outcome"
            ),
            ingest_bytes=meter.create_counter(
                "depot.ingest.bytes", "By", "Bytes of files ingested (as received), by outcome"
            ),
            wado_bytes=meter.create_counter(
                "depot.wado.bytes", "By", "Bytes of instance bodies served by WADO"
            ),
            active_grants=meter.create_observable_gauge(
                "depot.grants.active", [_observe_active_grants], "{grant}",
                "Compute grants neither expired nor revoked",
            ),
        )  # fmt: skip


_count_active_grants: Callable[[], int] | None = None


def watch_active_grants(count: Callable[[], int]) -> None:
    """Where the `depot.grants.active` gauge reads its value (the app's index)."""
    global _count_active_grants
    _count_active_grants = count


def _observe_active_grants(_options: metrics.CallbackOptions) -> list[metrics.Observation]:
    if _count_active_grants is None:
        return []
    try:
        return [metrics.Observation(_count_active_grants())]
    except Exception as error:  # noqa: BLE001  (a metric reads; it never breaks the export)
        log.warning("active grants could not be counted (%s)", type(error).__name__)
        return []


_NOOP = Telemetry.from_providers(trace.NoOpTracerProvider(), metrics.NoOpMeterProvider())
_current: Telemetry = _NOOP
_from_environment: Telemetry | None = None  # the SDK providers are built once per process


def current() -> Telemetry:
    return _current


def install(telemetry: Telemetry) -> Telemetry:
    """Make `telemetry` the one hooks use; returns the previous one (tests restore it)."""
    global _current
    previous, _current = _current, telemetry
    return previous


def setup_telemetry(
    settings: object = None,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> Telemetry:
    """Configure from the `OTEL_*` environment, or use the providers given (tests).

    Providers given are used as they are and not made global (OpenTelemetry allows one
    global provider per process). From the environment, the SDK providers are built on the
    first call, made global, and reused by later calls (an app factory called again). With
    no exporter configured, nothing changes: the no-op telemetry stays. `settings` is for
    symmetry with the other factories: everything comes from `OTEL_*`.
    """
    global _from_environment
    del settings
    if tracer_provider is not None or meter_provider is not None:
        return _install_providers(
            tracer_provider or trace.NoOpTracerProvider(),
            meter_provider or metrics.NoOpMeterProvider(),
        )
    if _from_environment is not None:
        install(_from_environment)
        return _from_environment
    traces, metric = _exporter_names("TRACES"), _exporter_names("METRICS")
    if not traces and not metric:
        return _current
    tracer_provider, meter_provider = _sdk_providers(traces, metric)
    if traces:
        trace.set_tracer_provider(tracer_provider)
    if metric:
        metrics.set_meter_provider(meter_provider)
    _from_environment = _install_providers(tracer_provider, meter_provider)
    return _from_environment


def _install_providers(
    tracer_provider: trace.TracerProvider, meter_provider: metrics.MeterProvider
) -> Telemetry:
    telemetry = Telemetry.from_providers(tracer_provider, meter_provider)
    install(telemetry)
    return telemetry


def _exporter_names(signal: str) -> list[str]:
    value = os.environ.get(f"OTEL_{signal}_EXPORTER", "")
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    return [] if not names or "none" in names else names


def _exporter(group: str, name: str):
    if name == "otlp":
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").lower()
        name = "otlp_proto_grpc" if protocol == "grpc" else "otlp_proto_http"
    for point in entry_points(group=group):
        if point.name == name:
            return point.load()()
    raise ValueError(f"OpenTelemetry exporter {name!r} is not installed ({group})")


def _sdk_providers(traces: list[str], metric: list[str]):
    # Imported here: an unconfigured server never loads the SDK.
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {"service.version": __version__}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = SERVICE_NAME
    resource = Resource.create(attributes)  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES win
    tracer_provider: trace.TracerProvider = trace.NoOpTracerProvider()
    meter_provider: metrics.MeterProvider = metrics.NoOpMeterProvider()
    if traces:
        sdk_tracer = TracerProvider(resource=resource)
        for name in traces:
            exporter = _exporter("opentelemetry_traces_exporter", name)
            sdk_tracer.add_span_processor(BatchSpanProcessor(exporter))
        tracer_provider = sdk_tracer
    if metric:
        readers = [
            PeriodicExportingMetricReader(_exporter("opentelemetry_metrics_exporter", name))
            for name in metric
        ]
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    return tracer_provider, meter_provider


# --- spans -------------------------------------------------------------------------------------


@contextmanager
def span(name: str, attributes: Attributes | None = None) -> Iterator[Span]:
    """A child span of the current one. An exception is recorded as its type name only:
    the SDK's own recording would export its message and traceback, which may quote values."""
    with _current.tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as current_span:
        try:
            yield current_span
        except BaseException as exc:
            _mark_error(current_span, exc)
            raise


def _mark_error(current_span: Span, exc: BaseException) -> None:
    try:
        current_span.set_status(Status(StatusCode.ERROR))
        current_span.set_attribute("error.type", type(exc).__name__)
    except Exception:  # noqa: BLE001  (telemetry never fails a request)
        pass


def traced(name: str) -> Callable:
    """Decorator: the call runs in a span `name` (attributes added with `set_attributes`)."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with span(name):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def set_attributes(attributes: Attributes) -> None:
    """Add counts or codes to the current span (a no-op without one)."""
    with contextlib.suppress(Exception):  # telemetry never fails a request
        trace.get_current_span().set_attributes(attributes)


def pseudonymized(engine: object, result: object) -> None:
    """On the `pseudonymize` span: the profile's name and how many attributes changed."""
    try:
        profile = getattr(getattr(engine, "profile", None), "name", None)
        set_attributes(
            {
                "depot.profile": str(profile or type(engine).__name__),
                "depot.changes": len(getattr(result, "changes", ()) or ()),
            }
        )
    except Exception:  # noqa: BLE001
        pass


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def traced_ingest_file(fn: Callable) -> Callable:
    """Decorator of the per-file ingest (`src` is its source path, the return value has
    `outcome` and `cause` enums): span `ingest.file`, counters by outcome. The source's
    name never goes out, only its size."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        size = 0
        try:
            src = signature.bind_partial(*args, **kwargs).arguments.get("src")
            size = file_size(Path(src)) if src is not None else 0
        except Exception:  # noqa: BLE001
            pass
        outcome = "error"
        with span("ingest.file") as current_span:
            try:
                result = fn(*args, **kwargs)
                outcome = _code(getattr(result, "outcome", None)) or "unknown"
                attributes = {"depot.outcome": outcome, "depot.bytes": size}
                if cause := _code(getattr(result, "cause", None)):
                    attributes["depot.cause"] = cause
                current_span.set_attributes(attributes)
                return result
            finally:
                _add(_current.ingest_instances, 1, {"depot.outcome": outcome})
                _add(_current.ingest_bytes, size, {"depot.outcome": outcome})

    return wrapper


def _code(value: object) -> str | None:
    code = getattr(value, "value", None)
    return code if isinstance(code, str) else None


def _add(counter: metrics.Counter, amount: int | float, attributes: Attributes) -> None:
    with contextlib.suppress(Exception):
        counter.add(amount, attributes)


def counted_wado(chunks: Iterator[bytes | memoryview]) -> Iterator[bytes | memoryview]:
    """Pass the chunks of an instance body through, counting the bytes served."""
    for chunk in chunks:
        _add(_current.wado_bytes, len(chunk), {})
        yield chunk


# --- HTTP --------------------------------------------------------------------------------------


def _headers(scope: dict) -> dict[str, str]:
    """Only what trace context propagation reads (W3C traceparent, tracestate, baggage)."""
    wanted = (b"traceparent", b"tracestate", b"baggage")
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope.get("headers", [])
        if name in wanted
    }


def _project(scope: dict) -> str | None:
    value = (scope.get("path_params") or {}).get("project_id")
    if isinstance(value, str) and 2 <= len(value) <= 63 and set(value) <= _PROJECT_ID_CHARS:
        return value
    return None


class TelemetryMiddleware:
    """One span and two measurements per HTTP request, pure ASGI (WADO bodies stream).

    Not opentelemetry-instrumentation-fastapi: it records the raw target (`http.target`,
    `url.full`, `url.path`, `url.query`), and on the ingest route the path holds the
    ORIGINAL StudyInstanceUID. Here the span carries the route template (`http.route`,
    known once the router matched), the method, the status code and the project id only.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        telemetry = _current
        method = str(scope.get("method", "GET"))
        status = 500
        started = time.perf_counter()

        async def send_status(message) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message.get("status", 500))
            await send(message)

        try:
            context = propagate.extract(_headers(scope))
        except Exception:  # noqa: BLE001
            context = None
        with telemetry.tracer.start_as_current_span(
            method,
            context=context,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method},
            record_exception=False,
            set_status_on_exception=False,
        ) as request_span:
            try:
                await self.app(scope, receive, send_status)
            except BaseException as exc:
                status = 500
                _mark_error(request_span, exc)
                raise
            finally:
                self._finish(telemetry, request_span, scope, method, status, started)

    @staticmethod
    def _finish(telemetry, request_span, scope, method, status, started) -> None:
        try:
            route = getattr(scope.get("route"), "path", None)
            template = route if isinstance(route, str) else "(unmatched)"
            attributes: dict[str, str | int] = {
                "http.route": template,
                "http.response.status_code": status,
            }
            if project := _project(scope):
                attributes["depot.project"] = project
            request_span.update_name(f"{method} {template}")
            request_span.set_attributes(attributes)
            if status >= 500:
                request_span.set_status(Status(StatusCode.ERROR))
            measured = {
                "http.route": template,
                "http.request.method": method,
                "http.response.status_class": f"{status // 100}xx",
            }
            telemetry.http_requests.add(1, measured)
            telemetry.http_duration.record(time.perf_counter() - started, measured)
        except Exception:  # telemetry never fails a request
            log.debug("telemetry: a request was not measured", exc_info=True)
